//! The SQLite WAL stays bounded under sustained accept + deliver load while readers are active (issue 14):
//! checkpoints keep up, and the WAL starts over instead of growing with everything ever written (it once
//! reached 17 GB beside a 1.7 GB database, see `store/sqlite/writer.rs`).
//!
//! `herald serve` on the default settings, delivering to Postfix's `smtp-sink`, 32 clients posting messages
//! with a 256 KB attachment of their own, two readers listing, searching and opening messages throughout. The WAL
//! file's size is sampled every 50 ms. The short form writes at least 3 × the bound in messages (about a
//! minute in a debug build); `HERALD_WAL_SOAK_SECONDS` runs the long form (`--ignored`).

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use herald_testkit::{require_peer, smtp_sink_path};
use serde_json::{Value, json};

/// What the WAL may reach: the checkpointer's restart threshold (16,384 frames of 4 KB, about 64 MB) plus
/// what one checkpoint interval and one restart can add under this load.
const WAL_BOUND: u64 = 96 * 1024 * 1024;

/// Bytes of the attachment each message carries.
const ATTACHMENT_BYTES: usize = 256 * 1024;

/// Incompressible bytes, different for every `seed` (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Kills the process when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wal_size(db: &Path) -> u64 {
    std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len())
}

/// Runs the load until `enough` says so; returns (messages accepted, bytes of attachments they carried, WAL peak).
async fn sustained_load(enough: impl Fn(Duration, u64) -> bool) -> Option<(u64, u64, u64)> {
    let sink_path = require_peer(
        "smtp-sink",
        smtp_sink_path(),
        "run scripts/setup-test-deps or set HERALD_SMTP_SINK",
    )?;
    let sink_addr = common::serve::free_addr();
    // -u nobody: smtp-sink refuses to run as root without dropping privileges.
    let _sink = Process(
        Command::new(sink_path)
            .args(["-c", "-u", "nobody", &sink_addr.to_string(), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let addr = common::serve::free_addr();
    let mut command = common::serve::serve_command(addr, &format!("sqlite://{}", db.display()));
    command.env("HERALD_RELAY_URL", format!("smtp://{sink_addr}?tls=none"));
    let _node = Process(common::serve::spawn_ready(command, addr).await);
    let base = format!("http://{addr}");

    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, text_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for c in 0..32_u64 {
        let (base, stop, accepted, text_bytes) = (
            base.clone(),
            stop.clone(),
            accepted.clone(),
            text_bytes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = c * 10_000_000;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // An attachment of its own per message (an identical one would be stored once), which
                // writes a lot for little CPU in a debug build.
                let content = B64.encode(noise(n, ATTACHMENT_BYTES));
                let body = json!({"from": "shop@example.test", "to": format!("c{n}@example.test"),
                                  "subject": format!("report {n}"), "text": format!("report {n} attached"),
                                  "attachments": [{"filename": "report.bin",
                                                   "content_type": "application/octet-stream",
                                                   "content_base64": content}]});
                let ok = client
                    .post(format!("{base}/v1/messages"))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202);
                if ok {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    text_bytes.fetch_add(ATTACHMENT_BYTES as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    // Readers throughout: each holds a read snapshot while it runs, which a checkpoint must work around.
    for reader in 0..2 {
        let (base, stop) = (base.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let query = if reader == 0 {
                    "limit=50"
                } else {
                    "q=report&limit=50"
                };
                let Ok(page) = client
                    .get(format!("{base}/v1/messages?{query}"))
                    .send()
                    .await
                else {
                    continue;
                };
                let page: Value = page.json().await.unwrap_or_default();
                if let Some(id) = page["items"][0]["id"].as_str() {
                    let _ = client.get(format!("{base}/v1/messages/{id}")).send().await;
                }
            }
        }));
    }
    let start = Instant::now();
    let mut peak = 0;
    while !enough(start.elapsed(), text_bytes.load(Ordering::Relaxed)) {
        peak = peak.max(wal_size(&db));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    peak = peak.max(wal_size(&db));
    let database = std::fs::metadata(&db).unwrap().len();
    let (accepted, text_bytes) = (
        accepted.load(Ordering::Relaxed),
        text_bytes.load(Ordering::Relaxed),
    );
    eprintln!(
        "{accepted} messages accepted in {:.1} s ({} MB of attachments), WAL peak {:.1} MB, database {:.1} MB",
        start.elapsed().as_secs_f64(),
        text_bytes / 1_000_000,
        peak as f64 / 1e6,
        database as f64 / 1e6,
    );
    Some((accepted, text_bytes, peak))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_sustained_load_with_readers() {
    let Some((accepted, text_bytes, peak)) = sustained_load(|elapsed, written| {
        written >= 3 * WAL_BOUND || elapsed > Duration::from_secs(120)
    })
    .await
    else {
        return;
    };
    assert!(
        text_bytes >= 3 * WAL_BOUND,
        "the load must write well past the bound to show anything: {accepted} messages, {text_bytes} bytes"
    );
    assert!(
        peak <= WAL_BOUND,
        "WAL peak {peak} bytes over {WAL_BOUND} after {text_bytes} bytes written"
    );
}

/// The long form: `HERALD_WAL_SOAK_SECONDS=600 cargo test -p herald --test wal_bounded -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: minutes of sustained load (HERALD_WAL_SOAK_SECONDS, default 600)"]
async fn the_wal_stays_bounded_for_minutes() {
    let seconds: u64 = std::env::var("HERALD_WAL_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let Some((_, text_bytes, peak)) =
        sustained_load(|elapsed, _| elapsed > Duration::from_secs(seconds)).await
    else {
        return;
    };
    assert!(
        peak <= WAL_BOUND,
        "WAL peak {peak} bytes over {WAL_BOUND} after {text_bytes} bytes written"
    );
}
