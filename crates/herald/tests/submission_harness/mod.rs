//! A real `herald serve` in process with SMTP submission on port 0, delivering to the herald-testkit capture
//! relay, and a raw-socket SMTP client that asserts exact replies (mini-redis `tests/server.rs` shape).
//! Include with `mod submission_harness;`.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use herald::{config::Config, serve};
use herald_testkit::{ServerConfig, TestPki, TestServer};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

pub const TOKEN: &str = "smtp-test-token-0123456789";

pub struct Herald {
    pub server: Option<serve::Server>,
    pub smtp: SocketAddr,
    pub smtps: Option<SocketAddr>,
    pub base: String,
    pub relay: TestServer,
    pub client: reqwest::Client,
    pub token: Option<String>,
    pub dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (when TLS is on), as a PEM file.
    pub ca_file: Option<PathBuf>,
}

pub struct Setup {
    pub token: bool,
    pub tls: bool,
    pub smtps: bool,
    pub listen: &'static str,
    pub env: Vec<(&'static str, String)>,
    /// The capture relay's extensions (default: a modern relay).
    pub relay: ServerConfig,
}

impl Default for Setup {
    /// The defaults a user gets: only `HERALD_SMTP_LISTEN` (on loopback), no token, no TLS.
    fn default() -> Self {
        Self {
            token: false,
            tls: false,
            smtps: false,
            listen: "127.0.0.1:0",
            env: Vec::new(),
            relay: ServerConfig::default(),
        }
    }
}

pub async fn start(setup: Setup) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestServer::start(setup.relay.clone()).await;
    let mut values: HashMap<String, String> = HashMap::from([
        ("HERALD_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "HERALD_DATABASE_URL".into(),
            format!("sqlite://{}", dir.path().join("herald.db").display()),
        ),
        (
            "HERALD_RELAY_URL".into(),
            format!("smtp://127.0.0.1:{}?tls=none", relay.port()),
        ),
        ("HERALD_SMTP_LISTEN".into(), setup.listen.into()),
    ]);
    if setup.token {
        values.insert("HERALD_API_TOKEN".into(), TOKEN.into());
    }
    let mut ca_file = None;
    if setup.tls || setup.smtps {
        let pki = TestPki::new();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, &pki.server_cert_pem).unwrap();
        std::fs::write(&key, &pki.server_key_pem).unwrap();
        ca_file = Some(pki.write_ca_pem(dir.path()));
        values.insert("HERALD_SMTP_TLS_CERT".into(), cert.display().to_string());
        values.insert("HERALD_SMTP_TLS_KEY".into(), key.display().to_string());
    }
    if setup.smtps {
        values.insert("HERALD_SMTPS_LISTEN".into(), "127.0.0.1:0".into());
    }
    for (key, value) in setup.env {
        values.insert(key.into(), value);
    }
    let server = serve::start(Config::from_values(&values).unwrap())
        .await
        .unwrap();
    Herald {
        smtp: server.smtp_addr.expect("SMTP is listening"),
        smtps: server.smtps_addr,
        base: format!("http://{}", server.addr),
        server: Some(server),
        relay,
        client: reqwest::Client::new(),
        token: setup.token.then(|| TOKEN.to_owned()),
        dir,
        ca_file,
    }
}

impl Herald {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.get(format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn message(&self, id: &str) -> Value {
        self.get(&format!("/v1/messages/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn raw(&self, id: &str) -> Vec<u8> {
        let response = self
            .get(&format!("/v1/messages/{id}/raw"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().await.unwrap().to_vec()
    }

    /// How many messages the store holds, whatever their status.
    pub async fn stored(&self) -> usize {
        let list: Value = self
            .get("/v1/messages?limit=100")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no message list: {list}"))
            .len()
    }

    /// Polls until message `id` has status `status` (deadline 20 s).
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let start = Instant::now();
        loop {
            let view = self.message(id).await;
            if view["status"] == status {
                return view;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{id} never became {status}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }
}

/// The id in a `250 2.0.0 queued as ID` reply.
pub fn queued_id(reply: &str) -> String {
    reply
        .split_whitespace()
        .last()
        .unwrap_or_else(|| panic!("no id in {reply:?}"))
        .to_owned()
}

/// A raw SMTP client: writes bytes, reads whole replies (multi-line joined with `\n`).
pub struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, write) = stream.into_split();
        Raw {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    /// Connects, reads the greeting and says EHLO.
    pub async fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        let ehlo = raw.command("EHLO client.test").await;
        assert!(ehlo.starts_with("250"), "{ehlo}");
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// One reply (all its lines), or `""` when the server closed the connection. Deadline 10 s.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                    .await
                    .expect("a reply within 10 s");
            if read.unwrap_or(0) == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    pub async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut self.reader, &mut rest),
        )
        .await
        .expect("closed within 10 s");
        read.is_err() || rest.is_empty()
    }
}

/// Asserts that `reply` begins with `code` (e.g. `"550 5.6.0"`).
#[track_caller]
pub fn expect(reply: &str, code: &str) {
    assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
}

/// A Python interpreter (`$HERALD_PYTHON`, else `python3`) that can import `module`; `None` (skip, or panic
/// under `HERALD_REQUIRE_PEERS`) when there is none.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let python: PathBuf = std::env::var_os("HERALD_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
        .into();
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|status| status.success());
    herald_testkit::require_peer(
        &format!("python with {module}"),
        ok.then_some(python),
        "run scripts/setup-test-deps and set HERALD_PYTHON=.venv/bin/python",
    )
}

/// Runs a client program to its end off the async workers (the server runs on them).
pub async fn output(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("the client program starts"))
        .await
        .unwrap()
}
