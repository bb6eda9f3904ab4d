//! `herald send` end to end: the real binary against the test SMTP server.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use herald_testkit::{Fault, ServerConfig, TestPki, TestServer, When};

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-send-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `herald send` with `args` (and extra environment) off the async runtime.
async fn herald_send(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("send")
            .args(&args)
            .env_remove("HERALD_RELAY_PASSWORD")
            .env_remove("HERALD_RELAY_URL");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run herald")
    })
    .await
    .unwrap()
}

fn plain_relay(server: &TestServer) -> String {
    format!("smtp://127.0.0.1:{}?tls=none&timeout_s=10", server.port())
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_flags_composes_sends_and_prints_every_recipient() {
    let server = TestServer::capture().await;
    let dir = temp_dir("flags");
    let html = write(
        &dir,
        "body.html",
        "<p>Hello <img src=\"cid:logo\"></p>".as_bytes(),
    );
    let logo = write(&dir, "logo.png", b"\x89PNG\r\n\x1a\nnot really a png");
    let pdf = write(&dir, "invoice.pdf", b"%PDF-1.4\n.leading dot line\n");
    let relay = plain_relay(&server);
    let output = herald_send(
        args(&[
            "--relay",
            &relay,
            "--from",
            "Shop <shop@sender.test>",
            "--to",
            "Ann <ann@rcpt.test>",
            "--to",
            "bob@rcpt.test",
            "--cc",
            "carl@rcpt.test",
            "--bcc",
            "dana@rcpt.test",
            "--subject",
            "Your order 📦",
            "--text",
            "Hello.\n.dot line",
            "--html",
            &html,
            "--attach",
            &pdf,
            "--inline",
            &format!("logo={logo}"),
        ]),
        vec![],
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for address in [
        "ann@rcpt.test",
        "bob@rcpt.test",
        "carl@rcpt.test",
        "dana@rcpt.test",
    ] {
        assert!(
            stdout.lines().any(|line| line.starts_with("accepted")
                && line.contains(address)
                && line.contains("250 2.0.0")),
            "{stdout}"
        );
    }
    let transaction = &server.transactions()[0];
    assert_eq!(transaction.mail_from, "shop@sender.test");
    assert_eq!(
        transaction.recipients,
        [
            "ann@rcpt.test",
            "bob@rcpt.test",
            "carl@rcpt.test",
            "dana@rcpt.test"
        ]
    );
    let content = String::from_utf8_lossy(&transaction.content);
    assert!(
        content
            .to_ascii_lowercase()
            .contains("subject: your order =?utf-8?"),
        "{content}"
    );
    assert!(
        content.contains("multipart/mixed")
            && content.contains("multipart/related")
            && content.contains("invoice.pdf")
    );
    assert!(
        !content.contains("dana@rcpt.test"),
        "Bcc must not appear in the headers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_a_request_file() {
    let server = TestServer::capture().await;
    let dir = temp_dir("request");
    write(&dir, "note.txt", b"attached text\n");
    let request = serde_json::json!({
        "from": "noreply@sender.test",
        "to": ["x@rcpt.test"],
        "subject": "From a request",
        "text": "Body",
        "attachments": [{ "filename": "note.txt", "path": "note.txt" }],
    });
    let path = write(&dir, "request.json", request.to_string().as_bytes());
    let output = herald_send(
        args(&["--relay", &plain_relay(&server), "--request", &path]),
        vec![],
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let content = String::from_utf8_lossy(&server.transactions()[0].content).into_owned();
    assert!(
        content.contains("Subject: From a request") && content.contains("note.txt"),
        "{content}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_makes_the_exit_status_fail_with_the_reply() {
    let config = ServerConfig::default().fault(Fault::reply(
        When::RcptTo(Some("nobody@rcpt.test".into())),
        "550 5.1.1 No such user here",
    ));
    let server = TestServer::start(config).await;
    let output = herald_send(
        args(&[
            "--relay",
            &plain_relay(&server),
            "--from",
            "a@sender.test",
            "--to",
            "ok@rcpt.test",
            "--to",
            "nobody@rcpt.test",
            "--text",
            "x",
        ]),
        vec![],
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("accepted") && l.contains("ok@rcpt.test")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("permanent")
            && l.contains("nobody@rcpt.test 550 5.1.1 No such user here")),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 2 recipients not accepted"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_exits_75_with_the_server_reply() {
    let server = TestServer::start(
        ServerConfig::default().fault(Fault::reply(When::Greeting, "421 4.3.2 Try again later")),
    )
    .await;
    let output = herald_send(
        args(&[
            "--relay",
            &plain_relay(&server),
            "--from",
            "a@sender.test",
            "--to",
            "b@rcpt.test",
            "--text",
            "x",
        ]),
        vec![],
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(75), "{stdout}{stderr}");
    assert!(stderr.contains("421 4.3.2 Try again later"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_auth_with_the_password_from_the_environment() {
    let pki = TestPki::new();
    let server = TestServer::start(ServerConfig {
        starttls: Some(pki.server_config()),
        auth: Some(("alice".into(), "s3cret pw".into())),
        ..ServerConfig::default()
    })
    .await;
    let dir = temp_dir("tls");
    let ca = pki.write_ca_pem(&dir);
    let relay = format!(
        "smtp://alice@127.0.0.1:{}?ca={}&timeout_s=10",
        server.port(),
        ca.display()
    );
    let send = |password: &str| {
        herald_send(
            args(&[
                "--relay",
                &relay,
                "--from",
                "a@sender.test",
                "--to",
                "b@rcpt.test",
                "--text",
                "secure",
            ]),
            vec![("HERALD_RELAY_PASSWORD", password.to_string())],
        )
    };
    let output = send("s3cret pw").await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let transaction = &server.transactions()[0];
    assert!(transaction.tls && transaction.auth_user.as_deref() == Some("alice"));

    let output = send("wrong-password-42").await;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("authentication failed: 535 5.7.8"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-password-42") && !stdout.contains("wrong-password-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_url_errors_are_clear() {
    let output = herald_send(
        args(&[
            "--relay",
            "smtp://u:hunter2@127.0.0.1?colour=blue",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
        ]),
        vec![],
    )
    .await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("unknown query key \"colour\""), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // Required STARTTLS against a server without it.
    let server = TestServer::capture().await;
    let relay = format!("smtp://127.0.0.1:{}?timeout_s=10", server.port());
    let output = herald_send(
        args(&[
            "--relay",
            &relay,
            "--from",
            "a@sender.test",
            "--to",
            "b@rcpt.test",
            "--text",
            "x",
        ]),
        vec![],
    )
    .await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not offer STARTTLS"), "{stderr}");
}

/// 8-bit text goes out as `8bit` with `BODY=8BITMIME` when the relay offers 8BITMIME (RFC 6152), and as
/// 7-bit (quoted-printable) without the parameter when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_text_uses_8bitmime_when_the_relay_offers_it() {
    // A text body that is the whole message is sent literally only when it ends with a line break (see
    // herald-mime's text_entity); otherwise quoted-printable keeps the decoded text exact.
    let text = "Grüße aus Köln — 您的订单已发货\n";
    for offered in [true, false] {
        let server = TestServer::start(ServerConfig {
            eight_bit_mime: offered,
            ..ServerConfig::default()
        })
        .await;
        let relay = plain_relay(&server);
        let output = herald_send(
            args(&[
                "--relay",
                &relay,
                "--from",
                "shop@sender.test",
                "--to",
                "ann@rcpt.test",
                "--subject",
                "Bestellung",
                "--text",
                text,
            ]),
            vec![],
        )
        .await;
        let (stdout, stderr) = self::text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        let transactions = server.transactions();
        assert_eq!(transactions.len(), 1);
        let sent = &transactions[0];
        let content = String::from_utf8_lossy(&sent.content);
        if offered {
            assert!(
                sent.mail_params.split(' ').any(|p| p == "BODY=8BITMIME"),
                "MAIL FROM parameters: {:?}",
                sent.mail_params
            );
            assert!(content.contains(text.trim_end()), "{content}");
            assert!(
                content.contains("Content-Transfer-Encoding: 8bit"),
                "{content}"
            );
        } else {
            assert!(
                !sent.mail_params.contains("BODY="),
                "no BODY= to a relay without 8BITMIME: {:?}",
                sent.mail_params
            );
            assert!(sent.content.is_ascii(), "{content}");
            assert!(
                !content.contains("Content-Transfer-Encoding: 8bit"),
                "{content}"
            );
        }
    }
}
