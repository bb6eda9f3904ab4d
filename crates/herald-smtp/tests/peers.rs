//! Interoperability with real servers: Postfix `smtp-sink` and Python `aiosmtpd` (STARTTLS with a
//! certificate made here, AUTH). Each test prints SKIPPED and passes when its peer is missing,
//! unless HERALD_REQUIRE_PEERS is set (CI), then it fails.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use herald_smtp::{
    Client, Credentials, Envelope, Error, Pool, PoolConfig, RelayConfig, Security, Status, Timeouts,
};
use herald_testkit::{TestPki, python_with_aiosmtpd, require_peer, smtp_sink_path};

/// Kills the peer process when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until something accepts connections on `port` (deadline 10 s).
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "peer did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn body(i: usize) -> Vec<u8> {
    format!("From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: peer {i}\r\n\r\n.leading dot\r\nline\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_sink_accepts_pipelined_pooled_mail() {
    let Some(sink) = require_peer(
        "smtp-sink",
        smtp_sink_path(),
        "run scripts/setup-test-deps or set HERALD_SMTP_SINK",
    ) else {
        return;
    };
    let port = free_port();
    let dump = std::env::temp_dir().join(format!("herald-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dump).unwrap();
    let mut command = Command::new(&sink);
    // -u nobody: smtp-sink refuses to run as root without dropping privileges.
    command
        .args(["-c", "-u", "nobody", &format!("127.0.0.1:{port}"), "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _sink = Peer(command.spawn().expect("start smtp-sink"));
    wait_listening(port);

    let mut config = RelayConfig::new("127.0.0.1", port);
    config.security = Security::None;
    config.timeouts = Timeouts::all(Duration::from_secs(10));
    let pool = Pool::new(
        Client::new(config).unwrap(),
        PoolConfig {
            max_connections: 2,
            ..PoolConfig::default()
        },
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.send_raw(
                &Envelope::new(
                    "a@sender.test",
                    [format!("r{i}@rcpt.test"), format!("s{i}@rcpt.test")],
                ),
                &body(i),
            )
            .await
        }));
    }
    for task in tasks {
        let delivery = task.await.unwrap().unwrap();
        assert!(delivery.all_accepted(), "{delivery:?}");
        assert_eq!(delivery.recipients.len(), 2);
    }
    assert!(pool.stats().opened <= 2);
    pool.close().await;
}

const AIOSMTPD_SERVER: &str = r#"
import asyncio, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Handler:
    async def handle_DATA(self, server, session, envelope):
        print("MESSAGE", envelope.mail_from, ",".join(envelope.rcpt_tos), len(envelope.content),
              envelope.content.count(b"\r\n..") , flush=True)
        return "250 2.0.0 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alice" and auth_data.password == b"s3cret"
    # handled=False: aiosmtpd sends the 535 itself (its default assumes we did).
    return AuthResult(success=ok, handled=False)

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context,
                        require_starttls=True, authenticator=authenticator, auth_require_tls=True)
controller.start()
print("READY", flush=True)
sys.stdin.read()
controller.stop()
"#;

#[tokio::test]
async fn aiosmtpd_with_starttls_and_auth() {
    let Some(python) = require_peer(
        "aiosmtpd",
        python_with_aiosmtpd(),
        "run scripts/setup-test-deps and set HERALD_PYTHON=.venv/bin/python",
    ) else {
        return;
    };
    let pki = TestPki::new();
    let dir = std::env::temp_dir().join(format!("herald-aiosmtpd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, script) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("server.py"),
    );
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    std::fs::write(&script, AIOSMTPD_SERVER).unwrap();
    let port = free_port();
    let mut child = Command::new(&python)
        .arg(&script)
        .args([
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start aiosmtpd");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _server = Peer(child);
    assert_eq!(lines.next().unwrap().unwrap(), "READY");

    let mut config = RelayConfig::new("127.0.0.1", port);
    config.security = Security::StartTlsRequired;
    config.extra_roots = vec![pki.ca_der.clone()];
    config.timeouts = Timeouts::all(Duration::from_secs(10));
    config.credentials = Some(Credentials::password("alice", "s3cret"));
    let mut connection = Client::new(config.clone())
        .unwrap()
        .connect()
        .await
        .expect("STARTTLS + AUTH with aiosmtpd");
    assert!(connection.is_tls());
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test", "c@rcpt.test"]);
    let delivery = connection.send_raw(&envelope, &body(1)).await.unwrap();
    assert!(
        delivery
            .recipients
            .iter()
            .all(|r| r.status == Status::Accepted),
        "{delivery:?}"
    );
    connection.quit().await;
    let received = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    assert!(
        received.starts_with("MESSAGE a@sender.test b@rcpt.test,c@rcpt.test"),
        "{received}"
    );

    config.credentials = Some(Credentials::password("alice", "wrong"));
    let error = Client::new(config).unwrap().connect().await.unwrap_err();
    assert!(
        matches!(&error, Error::AuthFailed { reply } if reply.code == 535),
        "{error:?}"
    );
    assert!(error.is_permanent());
}
