//! SMTP submission (issue 11) against a real `herald serve` in process: raw sockets asserting exact replies,
//! Python's `smtplib` and `aiosmtplib`, Postfix's `smtp-source`; every message checked byte for byte at the
//! capture relay and through the API.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;
mod dkim_check;
mod submission_harness;

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use submission_harness::{
    Herald, Raw, Setup, TOKEN, expect, output, python_with, queued_id, start,
};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The relay's copy of the only message it received, once it has.
async fn relayed(herald: &Herald, count: usize) -> Vec<herald_testkit::Transaction> {
    herald
        .relay
        .wait_until("the relay received the messages", |relay| {
            relay.transactions().len() >= count
        })
        .await;
    herald.relay.transactions()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_defaults_a_pipelined_submission_is_kept_byte_for_byte() {
    // Only HERALD_SMTP_LISTEN: loopback, no token, no TLS.
    let herald = start(Setup::default()).await;
    let mut smtp = Raw::connect(herald.smtp).await;
    expect(&smtp.reply().await, "220 ");
    let ehlo = smtp.command("EHLO client.test").await;
    let keywords: Vec<&str> = ehlo.lines().skip(1).map(|l| &l[4..]).collect();
    assert_eq!(
        keywords,
        [
            "PIPELINING",
            "SIZE 26214400",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "AUTH PLAIN LOGIN",
            "HELP"
        ],
        "{ehlo}"
    );
    expect(&smtp.command("NOOP").await, "250 2.0.0");
    expect(&smtp.command("VRFY alice").await, "252 2.1.5");
    expect(&smtp.command("HELP").await, "214 2.0.0");
    expect(&smtp.command("RSET").await, "250 2.0.0");
    expect(&smtp.command("STARTTLS").await, "502 5.5.1");

    // One write: the envelope, DATA and (after 354) the message, then QUIT: replies come in order.
    smtp.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<hidden@example.com>\r\nDATA\r\n")
        .await;
    expect(&smtp.reply().await, "250 2.1.0");
    expect(&smtp.reply().await, "250 2.1.5");
    expect(&smtp.reply().await, "250 2.1.5");
    expect(&smtp.reply().await, "354 ");
    let kept = "From: App <app@example.com>\r\nTo: alice@example.com\r\nSubject: Disk 91% full\r\n\
        Message-ID: <alert-1@example.com>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n\
        /var is at 91%.\r\n.leading dot\r\n\r\n";
    let sent = kept
        .replace(
            "Subject:",
            "Bcc: hidden@example.com\r\nX-Herald-Tag: disk\r\nSubject:",
        )
        .replace("\r\n.leading", "\r\n..leading");
    smtp.send(format!("{sent}.\r\nQUIT\r\n").as_bytes()).await;
    let queued = smtp.reply().await;
    expect(&queued, "250 2.0.0 queued as ");
    expect(&smtp.reply().await, "221 ");
    let id = queued_id(&queued);

    let transactions = relayed(&herald, 1).await;
    assert_eq!(String::from_utf8_lossy(&transactions[0].content), kept);
    assert_eq!(transactions[0].mail_from, "app@example.com");
    assert_eq!(
        transactions[0].recipients,
        ["alice@example.com", "hidden@example.com"]
    );
    let view = herald.wait_for_status(&id, "delivered").await;
    assert_eq!(herald.raw(&id).await, kept.as_bytes());
    assert_eq!(view["subject"], "Disk 91% full");
    assert_eq!(view["source"], "smtp");
    assert_eq!(view["tags"], serde_json::json!(["disk"]));
    assert_eq!(view["to"], serde_json::json!(["alice@example.com"]));
    let kinds: Vec<&str> = view["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["to", "bcc"]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_make_one_message() {
    let herald = start(Setup::default()).await;
    let mut smtp = Raw::greeted(herald.smtp).await;
    let first = "Subject: chunked\r\nMessage-ID: <c@example.com>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n";
    let second = ".a dot that is not stuffed in BDAT\r\n";
    smtp.send(
        format!(
            "MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.com>\r\nBDAT {}\r\n{first}BDAT {} LAST\r\n{second}",
            first.len(),
            second.len()
        )
        .as_bytes(),
    )
    .await;
    expect(&smtp.reply().await, "250 2.1.0");
    expect(&smtp.reply().await, "250 2.1.5");
    expect(
        &smtp.reply().await,
        &format!("250 2.0.0 {} octets", first.len()),
    );
    let queued = smtp.reply().await;
    expect(&queued, "250 2.0.0 queued as ");
    let transactions = relayed(&herald, 1).await;
    assert_eq!(
        String::from_utf8_lossy(&transactions[0].content),
        format!("{first}{second}")
    );
    assert_eq!(
        herald.raw(&queued_id(&queued)).await,
        format!("{first}{second}").as_bytes()
    );
    herald.stop().await;
}

/// The seed-style message of the issue, built by Python's `email` package and sent with `smtplib` over
/// STARTTLS with AUTH LOGIN: text and HTML alternatives in Chinese, an inline image by `cid:`, a PDF with
/// a Chinese file name, To + Cc + Bcc. The script writes the bytes it sent, so the relay's copy can be
/// compared with them.
const SMTPLIB_SCRIPT: &str = r#"
import smtplib, ssl, sys, email.utils
from email import policy
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.mime.image import MIMEImage
from email.mime.application import MIMEApplication

host, port, ca, token, out = sys.argv[1:6]
msg = MIMEMultipart("mixed")
msg["From"] = email.utils.formataddr(("Herald 通知", "app@example.com"))
msg["To"] = email.utils.formataddr(("王小明", "alice@example.com"))
msg["Cc"] = "carol@example.com"
msg["Bcc"] = "bob@example.com"
msg["Subject"] = Header("您的订单已发货", "utf-8")
msg["Message-ID"] = email.utils.make_msgid(domain="example.com")
msg["Date"] = email.utils.formatdate()
related = MIMEMultipart("related")
alternative = MIMEMultipart("alternative")
alternative.attach(MIMEText("您好，您的订单已发货。\n", "plain", "utf-8"))
alternative.attach(MIMEText('<p>您好，您的订单已发货。</p><img src="cid:logo@example.com">', "html", "utf-8"))
related.attach(alternative)
image = MIMEImage(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "png")
image.add_header("Content-ID", "<logo@example.com>")
image.add_header("Content-Disposition", "inline", filename="logo.png")
related.attach(image)
msg.attach(related)
pdf = MIMEApplication(b"%PDF-1.4\n" + bytes(range(256)) * 16 + b"\n%%EOF\n", "pdf")
pdf.add_header("Content-Disposition", "attachment", filename=("utf-8", "", "发票 2026.pdf"))
msg.attach(pdf)
data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
open(out, "wb").write(data)

context = ssl.create_default_context(cafile=ca)
with smtplib.SMTP(host, int(port), local_hostname="client.test") as smtp:
    smtp.ehlo()
    assert smtp.has_extn("starttls")
    smtp.starttls(context=context)
    smtp.ehlo()
    smtp.user, smtp.password = "shop-backend", token
    code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
    assert code == 235, code
    smtp.mail("app@example.com")
    for rcpt in ["alice@example.com", "carol@example.com", "bob@example.com"]:
        smtp.rcpt(rcpt)
    code, reply = smtp.data(data)
    assert code == 250, (code, reply)
    print(reply.decode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_starttls_auth_login_multipart_in_chinese() {
    let Some(python) = python_with("smtplib") else {
        return;
    };
    // On loopback clear-text AUTH would be allowed; this client goes through STARTTLS as it must from
    // elsewhere (`auth_is_refused_in_clear_text_from_the_network`).
    let herald = start(Setup {
        token: true,
        tls: true,
        ..Setup::default()
    })
    .await;
    let script = herald.dir.path().join("send.py");
    std::fs::write(&script, SMTPLIB_SCRIPT).unwrap();
    let sent_file = herald.dir.path().join("sent.eml");
    let mut command = std::process::Command::new(&python);
    command
        .arg(&script)
        .arg("127.0.0.1")
        .arg(herald.smtp.port().to_string())
        .arg(herald.ca_file.as_ref().unwrap())
        .arg(TOKEN)
        .arg(&sent_file);
    let output = output(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "smtplib failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = queued_id(stdout.trim());
    let sent = String::from_utf8(std::fs::read(&sent_file).unwrap()).unwrap();
    assert!(sent.contains("\r\nBcc: bob@example.com\r\n"), "{sent}");
    let expected = sent.replace("Bcc: bob@example.com\r\n", "");

    let transactions = relayed(&herald, 1).await;
    assert_eq!(
        String::from_utf8_lossy(&transactions[0].content),
        expected,
        "the relay got other bytes than were sent (less the Bcc header)"
    );
    assert_eq!(
        transactions[0].recipients,
        ["alice@example.com", "carol@example.com", "bob@example.com"]
    );
    let view = herald.wait_for_status(&id, "delivered").await;
    assert_eq!(herald.raw(&id).await, expected.as_bytes());
    assert_eq!(view["subject"], "您的订单已发货");
    assert_eq!(view["source"], "smtp");
    let kinds: Vec<(&str, &str)> = view["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), r["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alice@example.com", "to"),
            ("carol@example.com", "cc"),
            ("bob@example.com", "bcc")
        ]
    );
    // Searchable by its Chinese text, like an API message.
    let found: Value = herald
        .client
        .get(format!("{}/v1/messages?q=发货", herald.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"][0]["id"], id, "{found}");
    herald.stop().await;
}

const AIOSMTPLIB_SCRIPT: &str = r#"
import asyncio, sys
from email.message import EmailMessage
import aiosmtplib

async def main(host, port, out):
    msg = EmailMessage()
    msg["From"] = "monitor@example.com"
    msg["To"] = "ops@example.com"
    msg["Subject"] = "CPU høy på web-1"
    msg.set_content("Belastning 12.5 — sjekk web-1.\n")
    data = msg.as_bytes()
    open(out, "wb").write(data)
    errors, reply = await aiosmtplib.send(data, sender="monitor@example.com", recipients=["ops@example.com"],
                                          hostname=host, port=int(port))
    print(reply)

asyncio.run(main(*sys.argv[1:4]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiosmtplib_on_the_defaults_gets_message_id_and_date_added() {
    let Some(python) = python_with("aiosmtplib") else {
        return;
    };
    let herald = start(Setup::default()).await;
    let script = herald.dir.path().join("send.py");
    std::fs::write(&script, AIOSMTPLIB_SCRIPT).unwrap();
    let sent_file = herald.dir.path().join("sent.eml");
    let mut command = std::process::Command::new(&python);
    command
        .arg(&script)
        .arg("127.0.0.1")
        .arg(herald.smtp.port().to_string())
        .arg(&sent_file);
    let output = output(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "aiosmtplib failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `EmailMessage.as_bytes()` ends lines with LF; aiosmtplib sends them as CRLF.
    let sent = String::from_utf8(std::fs::read(&sent_file).unwrap())
        .unwrap()
        .replace('\n', "\r\n");
    let transactions = relayed(&herald, 1).await;
    let relayed = String::from_utf8(transactions[0].content.clone()).unwrap();
    // RFC 6409 §8: the two fields the client left out come first; the rest is as sent.
    let (added, rest) = relayed.split_at(relayed.find("From: ").unwrap());
    assert_eq!(rest, sent);
    assert!(added.starts_with("Message-ID: <"), "{added}");
    assert!(added.contains("@example.com>\r\nDate: "), "{added}");
    let id = queued_id(stdout.trim());
    assert_eq!(herald.raw(&id).await, relayed.as_bytes());
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_source_pipelined_sessions_all_arrive_intact() {
    let Some(source) = herald_testkit::require_peer(
        "smtp-source",
        ["/usr/sbin/smtp-source", "/usr/bin/smtp-source"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file()),
        "install Debian's postfix package (scripts/setup-test-deps)",
    ) else {
        return;
    };
    let herald = start(Setup::default()).await;
    let mut command = std::process::Command::new(source);
    command
        .args([
            "-s",
            "4",
            "-m",
            "40",
            "-l",
            "2048",
            "-f",
            "load@example.com",
            "-t",
        ])
        .arg("sink@example.com")
        .arg(herald.smtp.to_string());
    let status = output(command).await.status;
    assert!(status.success());
    let transactions = relayed(&herald, 40).await;
    assert_eq!(transactions.len(), 40);
    for transaction in &transactions {
        assert_eq!(transaction.recipients, ["sink@example.com"]);
        // smtp-source sends its own Message-Id and Date: nothing is added, the bytes are its own.
        let content = String::from_utf8_lossy(&transaction.content);
        assert!(
            content.starts_with("From: <load@example.com>\r\n"),
            "{content}"
        );
        assert_eq!(content.matches("Message-Id: <").count(), 1, "{content}");
        assert!(!content.contains("Message-ID:"), "{content}");
        assert!(content.len() > 2048, "{}", content.len());
    }
    herald.stop().await;
}

/// Sends a transaction up to DATA's 354 on a session authenticated or not needing it.
async fn open_data(smtp: &mut Raw) {
    smtp.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    expect(&smtp.reply().await, "250 ");
    expect(&smtp.reply().await, "250 ");
    expect(&smtp.reply().await, "354 ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_reply_code_and_nothing_is_queued() {
    let herald = start(Setup {
        token: true,
        env: vec![("HERALD_BODY_LIMIT", "20000".into())],
        ..Setup::default()
    })
    .await;
    let auth = format!("AUTH PLAIN {}", b64(&format!("\0app\0{TOKEN}")));

    // Authentication: required, and a wrong token is 535 5.7.8.
    let mut smtp = Raw::greeted(herald.smtp).await;
    expect(
        &smtp.command("MAIL FROM:<app@example.com>").await,
        "530 5.7.0",
    );
    let wrong = format!("AUTH PLAIN {}", b64("\0app\0not-the-token"));
    expect(&smtp.command(&wrong).await, "535 5.7.8");
    expect(&smtp.command("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    expect(&smtp.command(&b64("app")).await, "334 UGFzc3dvcmQ6");
    expect(&smtp.command(&b64("also-wrong")).await, "535 5.7.8");
    expect(&smtp.command(&auth).await, "235 2.7.0");

    // Addresses, sizes and sequence.
    expect(
        &smtp.command("RCPT TO:<alice@example.com>").await,
        "503 5.5.1",
    );
    expect(&smtp.command("MAIL FROM:<not an address>").await, "5");
    expect(
        &smtp.command("MAIL FROM:<app@example.com> SIZE=30000").await,
        "552 5.3.4",
    );
    expect(
        &smtp.command("MAIL FROM:<app@example.com>").await,
        "250 2.1.0",
    );
    expect(&smtp.command("RCPT TO:<bad@>").await, "553 5.1.3");
    expect(&smtp.command("DATA").await, "554 5.5.1");
    expect(&smtp.command("RSET").await, "250 2.0.0");
    let long = format!("NOOP {}", "x".repeat(1200));
    expect(&smtp.command(&long).await, "500 5.5.2");
    expect(&smtp.command("NOOP").await, "250 2.0.0");

    // Too many recipients: 452 4.5.3 past the limit (1000, as for the API).
    let mut many = String::from("MAIL FROM:<app@example.com>\r\n");
    for i in 0..1001 {
        many.push_str(&format!("RCPT TO:<r{i}@example.com>\r\n"));
    }
    smtp.send(format!("{many}RSET\r\n").as_bytes()).await;
    expect(&smtp.reply().await, "250 2.1.0");
    for _ in 0..1000 {
        expect(&smtp.reply().await, "250 2.1.5");
    }
    expect(&smtp.reply().await, "452 4.5.3");
    expect(&smtp.reply().await, "250 2.0.0");
    expect(&smtp.command("QUIT").await, "221 ");

    // Over-long line in DATA: 500 5.5.2, nothing queued.
    let mut smtp = Raw::greeted(herald.smtp).await;
    expect(&smtp.command(&auth).await, "235 ");
    open_data(&mut smtp).await;
    smtp.send(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "y".repeat(1200)).as_bytes())
        .await;
    expect(&smtp.reply().await, "500 5.5.2");

    // Oversized message: 552 5.3.4, nothing queued, and the session goes on in step.
    open_data(&mut smtp).await;
    let line = format!("{}\r\n", "z".repeat(98));
    smtp.send(format!("Subject: big\r\n\r\n{}.\r\n", line.repeat(300)).as_bytes())
        .await;
    expect(&smtp.reply().await, "552 5.3.4");
    expect(&smtp.command("NOOP").await, "250 2.0.0");

    // Bare-LF smuggling (CVE-2023-51764): `\n.\n` does not end the message, the commands after it are
    // never executed, and the message with a bare LF is refused.
    open_data(&mut smtp).await;
    smtp.send(
        b"Subject: smuggle\r\n\r\nhi\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n\
          Subject: smuggled\r\n\r\nevil\r\n.\r\nNOOP\r\n",
    )
    .await;
    expect(&smtp.reply().await, "550 5.6.0");
    // The next reply is the NOOP's: nothing in the message was taken as a command.
    expect(&smtp.reply().await, "250 2.0.0 ok");
    // And with bare CRs.
    open_data(&mut smtp).await;
    smtp.send(b"Subject: smuggle\r\n\r\nhi\r.\rMAIL FROM:<evil@example.com>\r\n.\r\n")
        .await;
    expect(&smtp.reply().await, "550 5.6.0");
    // An unknown control header is refused by name.
    open_data(&mut smtp).await;
    smtp.send(b"X-Herald-Sendat: 2030-01-01T00:00:00Z\r\nSubject: s\r\n\r\nx\r\n.\r\n")
        .await;
    let refused = smtp.reply().await;
    expect(&refused, "554 5.6.0");
    assert!(refused.contains("X-Herald-Sendat"), "{refused}");

    // A client vanishing mid-DATA: nothing of it is stored.
    open_data(&mut smtp).await;
    smtp.send(b"Subject: cut\r\n\r\nhalf a mess").await;
    drop(smtp);

    // Too many errors end the session with 421.
    let mut smtp = Raw::greeted(herald.smtp).await;
    for _ in 0..9 {
        expect(&smtp.command("BOGUS").await, "500 5.5.1");
    }
    let last = smtp.command("BOGUS").await;
    expect(&last, "500 5.5.1");
    expect(&smtp.reply().await, "421 4.7.0");
    assert!(smtp.closed().await);

    // A session that completes afterwards proves the server took the cut session's end.
    let mut smtp = Raw::greeted(herald.smtp).await;
    expect(&smtp.command("NOOP").await, "250 ");
    assert_eq!(herald.stored().await, 0, "something was queued");
    assert!(herald.relay.transactions().is_empty());
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_throttled_per_client() {
    let herald = start(Setup {
        token: true,
        ..Setup::default()
    })
    .await;
    let mut smtp = Raw::greeted(herald.smtp).await;
    let wrong = format!("AUTH PLAIN {}", b64("\0app\0guess"));
    let mut refusals = 0;
    // Sessions end after HERALD_SMTP_MAX_ERRORS refusals, so the guesses take several sessions.
    while refusals < 20 {
        let reply = smtp.command(&wrong).await;
        expect(&reply, "535 5.7.8");
        refusals += 1;
        if refusals % 9 == 0 {
            smtp = Raw::greeted(herald.smtp).await;
        }
    }
    // Past 20 failures in a minute, even the right token is not checked from this address.
    let right = format!("AUTH PLAIN {}", b64(&format!("\0app\0{TOKEN}")));
    expect(&smtp.command(&right).await, "454 4.7.0");
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_time_out_and_sessions_are_capped() {
    let herald = start(Setup {
        env: vec![
            ("HERALD_SMTP_COMMAND_TIMEOUT", "1s".into()),
            ("HERALD_SMTP_MAX_SESSIONS", "2".into()),
        ],
        ..Setup::default()
    })
    .await;
    let mut first = Raw::connect(herald.smtp).await;
    expect(&first.reply().await, "220 ");
    let mut second = Raw::connect(herald.smtp).await;
    expect(&second.reply().await, "220 ");
    let mut third = Raw::connect(herald.smtp).await;
    expect(&third.reply().await, "421 4.3.2");
    assert!(third.closed().await);
    // RFC 5321 §4.5.3.2: an idle client is told 421 and disconnected.
    expect(&first.reply().await, "421 4.4.2");
    assert!(first.closed().await);
    expect(&second.reply().await, "421 4.4.2");
    // Their places are free again.
    let mut again = Raw::connect(herald.smtp).await;
    expect(&again.reply().await, "220 ");
    herald.stop().await;
}

/// A non-loopback address of this machine (the one its default route would use), if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_refused_in_clear_text_from_the_network() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this machine has no non-loopback address to connect from");
        return;
    };
    let herald = start(Setup {
        token: true,
        tls: true,
        listen: "0.0.0.0:0",
        ..Setup::default()
    })
    .await;
    let mut smtp = Raw::connect(std::net::SocketAddr::new(ip, herald.smtp.port())).await;
    expect(&smtp.reply().await, "220 ");
    let ehlo = smtp.command("EHLO client.test").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered in clear text: {ehlo}");
    let auth = format!("AUTH PLAIN {}", b64(&format!("\0app\0{TOKEN}")));
    expect(&smtp.command(&auth).await, "538 5.7.11");
    expect(
        &smtp.command("MAIL FROM:<app@example.com>").await,
        "530 5.7.0",
    );
    assert_eq!(herald.stored().await, 0);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_listener_without_any_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let values = std::collections::HashMap::from([
        ("HERALD_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "HERALD_DATABASE_URL".to_owned(),
            format!("sqlite://{}", dir.path().join("h.db").display()),
        ),
        ("HERALD_SMTP_LISTEN".to_owned(), "0.0.0.0:0".to_owned()),
    ]);
    let config = herald::config::Config::from_values(&values).unwrap();
    let error = herald::serve::start(config).await.err().expect("refused");
    assert!(
        format!("{error:#}").contains("HERALD_SMTP_LISTEN"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_port_takes_a_message_after_the_handshake() {
    let Some(python) = python_with("smtplib") else {
        return;
    };
    let herald = start(Setup {
        token: true,
        smtps: true,
        ..Setup::default()
    })
    .await;
    let script = r#"
import smtplib, ssl, sys
host, port, ca, token = sys.argv[1:5]
with smtplib.SMTP_SSL(host, int(port), context=ssl.create_default_context(cafile=ca)) as smtp:
    smtp.login("anyone", token)
    smtp.mail("app@example.com"); smtp.rcpt("alice@example.com")
    code, reply = smtp.data(b"Subject: over 465\r\n\r\nhello\r\n")
    assert code == 250, (code, reply)
    print(reply.decode())
"#;
    let mut command = std::process::Command::new(&python);
    command
        .args(["-c", script, "127.0.0.1"])
        .arg(herald.smtps.unwrap().port().to_string())
        .arg(herald.ca_file.as_ref().unwrap())
        .arg(TOKEN);
    let output = output(command).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = queued_id(String::from_utf8_lossy(&output.stdout).trim());
    herald.wait_for_status(&id, "delivered").await;
    let _ = Duration::ZERO;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_content_is_kept_and_fails_permanently_at_a_relay_without_8bitmime() {
    let herald = start(Setup {
        relay: herald_testkit::ServerConfig {
            eight_bit_mime: false,
            ..Default::default()
        },
        ..Setup::default()
    })
    .await;
    let mut smtp = Raw::greeted(herald.smtp).await;
    let mut ids = Vec::new();
    for body in ["Grüße aus Köln\r\n", "plain ASCII\r\n"] {
        smtp.send(
            b"MAIL FROM:<app@example.com> BODY=8BITMIME\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n",
        )
        .await;
        for _ in 0..2 {
            expect(&smtp.reply().await, "250 ");
        }
        expect(&smtp.reply().await, "354 ");
        smtp.send(
            format!("Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}.\r\n")
                .as_bytes(),
        )
        .await;
        let queued = smtp.reply().await;
        expect(&queued, "250 2.0.0 queued as ");
        ids.push(queued_id(&queued));
    }
    // Accepted as sent, never re-encoded; the relay cannot take it, and the recipient says why.
    let failed = herald.wait_for_status(&ids[0], "failed").await;
    assert!(failed.to_string().contains("8BITMIME"), "{failed:#}");
    assert!(
        String::from_utf8(herald.raw(&ids[0]).await)
            .unwrap()
            .contains("Grüße aus Köln")
    );
    herald.wait_for_status(&ids[1], "delivered").await;
    assert_eq!(herald.relay.transactions().len(), 1);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_mid_message_does_not_hold_anyone_else() {
    let herald = start(Setup::default()).await;
    let mut slow = Raw::greeted(herald.smtp).await;
    open_data(&mut slow).await;
    slow.send(b"Subject: slow\r\n\r\nhalf of it").await;
    let mut fast = Raw::greeted(herald.smtp).await;
    open_data(&mut fast).await;
    let started = std::time::Instant::now();
    fast.send(b"Subject: fast\r\n\r\nall of it\r\n.\r\n").await;
    expect(&fast.reply().await, "250 2.0.0 queued as ");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the commit waited for the slow client: {:?}",
        started.elapsed()
    );
    slow.send(b", and the rest\r\n.\r\n").await;
    expect(&slow.reply().await, "250 2.0.0 queued as ");
    relayed(&herald, 2).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_starttls_are_discarded() {
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let herald = start(Setup {
        tls: true,
        ..Setup::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(herald.smtp).await.unwrap();
    let mut greeting = [0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut greeting)
        .await
        .unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    // CVE-2011-0411: a command injected behind STARTTLS in the same packet must not run inside TLS.
    stream
        .write_all(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line.starts_with("220 ") {
            break;
        }
        assert!(line.starts_with("250"), "{line}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(herald.ca_file.as_ref().unwrap()).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            reader.into_inner(),
        )
        .await
        .unwrap();
    let mut tls = BufReader::new(tls);
    tls.write_all(b"NOOP\r\n").await.unwrap();
    tls.flush().await.unwrap();
    line.clear();
    tls.read_line(&mut line).await.unwrap();
    // Had the injected MAIL run, its reply (503: no EHLO in the new session) would come first.
    assert!(line.starts_with("250 2.0.0"), "{line}");
    // The TLS session starts over: EHLO again, and now AUTH is offered.
    tls.write_all(b"EHLO c\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut ehlo = String::new();
    loop {
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        ehlo.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(herald.stored().await, 0);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_bdat_chunk_is_refused_without_reading_it() {
    let herald = start(Setup {
        env: vec![("HERALD_BODY_LIMIT", "10000".into())],
        ..Setup::default()
    })
    .await;
    let mut smtp = Raw::greeted(herald.smtp).await;
    smtp.send(
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.com>\r\nBDAT 999999999 LAST\r\n",
    )
    .await;
    expect(&smtp.reply().await, "250 ");
    expect(&smtp.reply().await, "250 ");
    expect(&smtp.reply().await, "552 5.3.4");
    assert!(smtp.closed().await);
    assert_eq!(herald.stored().await, 0);
    herald.stop().await;
}

/// Issue 13: a submission whose From domain has a DKIM key is signed after its control headers are removed;
/// the relay's copy and `/raw` verify with mail-auth and dkimpy, and a changed body byte fails both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_is_signed_after_its_control_headers_are_removed() {
    let herald = start(Setup::default()).await;
    let created = herald
        .client
        .post(format!("{}/v1/dkim", herald.base))
        .json(&serde_json::json!({"domain": "example.com", "selector": "smtp1", "algorithm": "ed25519"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let key: Value = created.json().await.unwrap();
    let records = dkim_check::Records::from_keys(&[key]);

    let mut smtp = Raw::greeted(herald.smtp).await;
    expect(&smtp.command("EHLO client.test").await, "250");
    expect(
        &smtp.command("MAIL FROM:<bounces@example.com>").await,
        "250",
    );
    expect(&smtp.command("RCPT TO:<alice@example.net>").await, "250");
    expect(&smtp.command("RCPT TO:<hidden@example.net>").await, "250");
    expect(&smtp.command("DATA").await, "354");
    smtp.send(
        b"From: App <app@example.com>\r\nTo: alice@example.net\r\nBcc: hidden@example.net\r\n\
          X-Herald-Tag: signed\r\nSubject: Signed by Herald\r\n\r\nThe body.\r\n.\r\n",
    )
    .await;
    let queued = smtp.reply().await;
    expect(&queued, "250 2.0.0 queued as ");
    let id = queued_id(&queued);
    let raw = herald.raw(&id).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(
        !text.contains("X-Herald-Tag") && !text.contains("Bcc:"),
        "{text}"
    );
    let relayed = relayed(&herald, 1).await;
    assert_eq!(
        relayed[0].content, raw,
        "the relay received the archived bytes"
    );
    let mut tampered = raw.clone();
    let body = tampered.len() - 4;
    tampered[body] ^= 0x01;
    dkim_check::assert_both(
        &records,
        &[("relayed".into(), relayed[0].content.clone())],
        true,
    )
    .await;
    dkim_check::assert_both(&records, &[("tampered".into(), tampered)], false).await;
    herald.stop().await;
}

/// (rows in `blobs`, bytes of all stored bodies) of the store at `url`.
async fn stored_bodies(url: &str) -> (i64, i64) {
    use sqlx::{Connection, Row};
    let sql =
        "SELECT (SELECT COUNT(*) FROM blobs), (SELECT COALESCE(SUM(LENGTH(raw)), 0) FROM messages)";
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let sql = sql.replace("LENGTH(raw)", "octet_length(raw)");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (row.get::<i64, _>(0), row.get::<i64, _>(1))
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        // SQLite keeps bodies in a table of their own (migration 0020).
        let sql = sql.replace("FROM messages)", "FROM message_bodies)");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (row.get::<i64, _>(0), row.get::<i64, _>(1))
    }
}

/// An application that submits the same invoice PDF with every message: the PDF is stored once, on SQLite
/// and on PostgreSQL, while the relay and `/raw` get every message byte for byte as submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_attachment_is_stored_once_on_sqlite_and_postgresql() {
    let mut stores = vec![None];
    if let Some(url) = common::fresh_postgres_database().await {
        stores.push(Some(url));
    }
    let pdf = base64::engine::general_purpose::STANDARD.encode(common::incompressible(30_000, 7));
    let pdf: String = pdf
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", std::str::from_utf8(line).unwrap()))
        .collect();
    for pg_url in stores {
        let mut setup = Setup::default();
        if let Some(url) = &pg_url {
            setup.env.push(("HERALD_DATABASE_URL", url.clone()));
        }
        let herald = start(setup).await;
        let url = pg_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", herald.dir.path().join("herald.db").display())
        });
        let mut sent = Vec::new();
        let mut ids = Vec::new();
        for n in 0..3 {
            let message = format!(
                "From: billing@example.com\r\nTo: customer{n}@example.com\r\nSubject: Invoice {n}\r\n\
                 Message-ID: <invoice-{n}@example.com>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\
                 MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\r\nInvoice {n} attached.\r\n--b\r\n\
                 Content-Type: application/pdf; name=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n{pdf}--b--\r\n"
            );
            let mut smtp = Raw::connect(herald.smtp).await;
            expect(&smtp.reply().await, "220 ");
            smtp.command("EHLO client.test").await;
            expect(
                &smtp.command("MAIL FROM:<billing@example.com>").await,
                "250 ",
            );
            expect(
                &smtp
                    .command(&format!("RCPT TO:<customer{n}@example.com>"))
                    .await,
                "250 ",
            );
            expect(&smtp.command("DATA").await, "354 ");
            smtp.send(format!("{message}.\r\n").as_bytes()).await;
            let queued = smtp.reply().await;
            expect(&queued, "250 2.0.0 queued as ");
            ids.push(queued_id(&queued));
            sent.push(message);
        }
        let transactions = relayed(&herald, 3).await;
        for message in &sent {
            assert!(
                transactions.iter().any(|t| t.content == message.as_bytes()),
                "the relay did not get this message byte for byte ({url})"
            );
        }
        for (id, message) in ids.iter().zip(&sent) {
            herald.wait_for_status(id, "delivered").await;
            assert_eq!(herald.raw(id).await, message.as_bytes());
        }
        let (blobs, raw_bytes) = stored_bodies(&url).await;
        assert_eq!(blobs, 1, "the PDF is one blob ({url})");
        assert!(
            raw_bytes < 3 * 2_000,
            "three bodies take {raw_bytes} bytes besides the shared PDF ({url})"
        );
        herald.stop().await;
    }
}
