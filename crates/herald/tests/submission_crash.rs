//! SIGKILL during an SMTP submission load: every message that got its final `250` is delivered after the
//! restart with the bytes sent, and every message stored is whole (a commit is all or nothing).

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::serve::{free_addr, serve_command, spawn_ready};
use herald_testkit::{ServerConfig, TestServer};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// The message a client sends as number `n` of task `task`: unique subject and body, 4 KB.
fn message(task: usize, n: usize) -> String {
    let mut text = format!(
        "From: load@example.com\r\nTo: sink@example.com\r\nSubject: load-{task}-{n}\r\n\
         Message-ID: <load-{task}-{n}@example.com>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n"
    );
    for line in 0..50 {
        text.push_str(&format!(
            "task {task} message {n} line {line:02} {}\r\n",
            "x".repeat(60)
        ));
    }
    text
}

async fn reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Some(line.trim_end().to_owned());
        }
    }
}

/// One client: sessions of pipelined transactions until the server goes away. Records each `250`'d id.
async fn client(smtp: SocketAddr, task: usize, acked: Arc<Mutex<HashMap<String, String>>>) {
    let Ok(stream) = TcpStream::connect(smtp).await else {
        return;
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if reply(&mut reader).await.is_none() || write.write_all(b"EHLO load\r\n").await.is_err() {
        return;
    }
    if reply(&mut reader).await.is_none() {
        return;
    }
    for n in 0.. {
        let text = message(task, n);
        let envelope = "MAIL FROM:<load@example.com>\r\nRCPT TO:<sink@example.com>\r\nDATA\r\n";
        if write.write_all(envelope.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..3 {
            if reply(&mut reader).await.is_none() {
                return;
            }
        }
        if write
            .write_all(format!("{text}.\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        match reply(&mut reader).await {
            Some(line) if line.starts_with("250 2.0.0 queued as ") => {
                let id = line.rsplit(' ').next().unwrap().to_owned();
                acked.lock().unwrap().insert(id, text);
            }
            Some(line) => panic!("refused under load: {line}"),
            None => return,
        }
    }
}

async fn api(client: &reqwest::Client, addr: SocketAddr, path: &str) -> reqwest::Response {
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_submissions_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("herald.db").display());
    let relay = TestServer::start(ServerConfig::default()).await;
    let (http, smtp) = (free_addr(), free_addr());
    let command = || {
        let mut command = serve_command(http, &database);
        command.env("HERALD_SMTP_LISTEN", smtp.to_string()).env(
            "HERALD_RELAY_URL",
            format!("smtp://127.0.0.1:{}?tls=none", relay.port()),
        );
        command
    };
    let mut child = spawn_ready(command(), http).await;

    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|task| tokio::spawn(client(smtp, task, acked.clone())))
        .collect();
    // Kill once the load is well under way (or after 10 s at most).
    let start = Instant::now();
    while acked.lock().unwrap().len() < 200 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "only {} messages before the kill",
        acked.len()
    );

    let mut child = spawn_ready(command(), http).await;
    let api_client = reqwest::Client::new();
    // Every acknowledged message is delivered, with the bytes that were sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, text) in &acked {
        loop {
            let view: Value = api(&api_client, http, &format!("/v1/messages/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if view["status"] == "delivered" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} acknowledged but not delivered: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let raw = api(&api_client, http, &format!("/v1/messages/{id}/raw"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(&raw[..], text.as_bytes(), "{id}");
    }
    // Nothing half-stored: every stored message (acknowledged or cut before its 250) is whole.
    let mut cursor = String::new();
    let mut stored = 0;
    loop {
        let page: Value = api(
            &api_client,
            http,
            &format!("/v1/messages?limit=1000{cursor}"),
        )
        .await
        .json()
        .await
        .unwrap();
        for item in page["items"].as_array().unwrap() {
            stored += 1;
            let id = item["id"].as_str().unwrap();
            let subject = item["subject"].as_str().unwrap();
            let (task, n) = subject
                .strip_prefix("load-")
                .and_then(|s| s.split_once('-'))
                .unwrap_or_else(|| panic!("unexpected subject {subject:?}"));
            let expected = message(task.parse().unwrap(), n.parse().unwrap());
            let raw = api(&api_client, http, &format!("/v1/messages/{id}/raw"))
                .await
                .bytes()
                .await
                .unwrap();
            assert_eq!(&raw[..], expected.as_bytes(), "{id} is not whole");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert!(stored >= acked.len());
    eprintln!(
        "acknowledged before SIGKILL: {}, stored: {stored}, relay transactions: {}",
        acked.len(),
        relay.transactions().len()
    );
    common::serve::terminate(&mut child);
}
