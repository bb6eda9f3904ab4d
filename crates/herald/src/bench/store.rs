//! `herald bench store`: standard notifications (../shared/bench), personalized, shared parts encoded
//! once, accepted durably by concurrent clients through the group commit; prints accepts/s, CPU µs per
//! message, accept latency percentiles and bytes stored per message.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use herald::{
    clock::SystemClock,
    store::{NewMessage, NewRecipient, RawSegment, RecipientKind, SharedBlob, Store, WriterPhase},
};
use tokio::sync::Mutex;

use super::{
    compose::Workload,
    fixtures::Fixtures,
    measure::{cpu_time, print_whole_run, runtime, thread_cpu},
};

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Messages to accept.
    #[arg(long, default_value_t = 50_000)]
    pub count: usize,
    /// Concurrent clients, each waiting for its commit before its next accept (like API requests).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Messages per accept call (1 = one message per request; a batch request passes many).
    #[arg(long, default_value_t = 1)]
    pub per_call: usize,
    /// Compose each message inside the timed loop too (default: composed before timing starts).
    #[arg(long)]
    pub compose: bool,
    /// Store URL; default: a fresh SQLite file in a temporary directory.
    #[arg(long)]
    pub database: Option<String>,
    /// ../shared/bench/fixtures, found automatically when run inside the repository.
    #[arg(long)]
    pub fixtures: Option<std::path::PathBuf>,
}

pub(super) async fn open_store(
    database: Option<&str>,
    dir: &tempfile::TempDir,
) -> anyhow::Result<(Store, String)> {
    let url = database
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store = Store::open(&url, Arc::new(SystemClock))
        .await
        .with_context(|| format!("opening {url}"))?;
    Ok((store, url))
}

fn sqlite_bytes(url: &str) -> Option<u64> {
    let path = url.strip_prefix("sqlite://")?;
    Some(
        ["", "-wal"]
            .iter()
            .map(|suffix| {
                std::fs::metadata(format!("{path}{suffix}"))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum(),
    )
}

/// Message `i` of the standard notification, in stored form, with the image and PDF shared.
fn stored(
    workload: &Workload,
    i: usize,
    shared: &(herald_mime::EncodedPart, herald_mime::EncodedPart),
    blobs: &[Arc<SharedBlob>],
) -> NewMessage {
    let composed = workload.build(i, Some(shared));
    let raw = composed
        .segments()
        .iter()
        .map(|segment| {
            match blobs
                .iter()
                .find(|b| b.bytes.as_ptr() == segment.bytes.as_ptr())
            {
                Some(blob) => RawSegment::Shared {
                    blob: blob.clone(),
                    dot_safe: segment.dot_safe,
                },
                None => RawSegment::Literal {
                    bytes: segment.bytes.clone(),
                    dot_safe: segment.dot_safe,
                },
            }
        })
        .collect();
    NewMessage {
        source: Default::default(),
        id: uuid::Uuid::now_v7().to_string(),
        sender: composed.envelope().sender.to_string(),
        subject: format!("standard notification {i}"),
        recipients: composed
            .envelope()
            .recipients
            .iter()
            .map(|a| NewRecipient {
                address: a.to_string(),
                kind: RecipientKind::To,
            })
            .collect(),
        search_text: format!("order ORD-{} customer{i}", 100_000_000 + i),
        raw,
        send_at: None,
        idempotency_key: None,
        batch_id: Some("bench".into()),
        tags: vec![],
        metadata: serde_json::Value::Object(Default::default()),
        ignore_suppressions: false,
        unsubscribe_list: None,
    }
}

pub fn run(args: StoreArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.clients == 0 || args.per_call == 0 {
        bail!("--count, --clients and --per-call must be at least 1");
    }
    let started = Instant::now();
    let workload = Arc::new(Workload::load(
        &Fixtures::find(args.fixtures.as_deref())?,
        false,
    )?);
    let (logo, pdf) = workload.parts();
    let shared = Arc::new((logo.encode(), pdf.encode()));
    // Hashed once; each blob holds the very allocation the composer puts into every message.
    let blobs: Arc<Vec<Arc<SharedBlob>>> = Arc::new(
        [shared.0.segment(), shared.1.segment()]
            .iter()
            .map(|s| SharedBlob::new(s.bytes.clone()))
            .collect(),
    );
    let dir = tempfile::tempdir()?;
    runtime()?.block_on(async {
        let (store, url) = open_store(args.database.as_deref(), &dir).await?;
        let before = sqlite_bytes(&url).unwrap_or(0);
        let store_for_clients = store.clone();
        let prepared: Option<Arc<Vec<NewMessage>>> = (!args.compose)
            .then(|| Arc::new((0..args.count).map(|i| stored(&workload, i, &shared, &blobs)).collect()));
        let message_bytes = workload.build(0, Some(&shared)).len();
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.count / args.per_call + 1)));
        let profile0 = writer_profile(&store);
        let sync0 = sync_profile(&store);
        let cpu0 = cpu_time();
        let writer0 = thread_cpu("herald-store-wr");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for client in 0..args.clients {
            let (store, prepared, latencies) = (store_for_clients.clone(), prepared.clone(), latencies.clone());
            let (workload, shared, blobs) = (workload.clone(), shared.clone(), blobs.clone());
            let (count, clients, per_call) = (args.count, args.clients, args.per_call);
            tasks.push(tokio::spawn(async move {
                let mine: Vec<usize> = (client..count).step_by(clients).collect();
                let mut own = Vec::new();
                for chunk in mine.chunks(per_call) {
                    let batch: Vec<NewMessage> = chunk
                        .iter()
                        .map(|&i| match &prepared {
                            Some(all) => all[i].clone(),
                            None => stored(&workload, i, &shared, &blobs),
                        })
                        .collect();
                    let t = Instant::now();
                    store.accept(batch).await?;
                    own.push(t.elapsed());
                }
                latencies.lock().await.extend(own);
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let wall = start.elapsed();
        let writer_us = match (writer0, thread_cpu("herald-store-wr")) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64() * 1e6 / args.count as f64),
            _ => None,
        };
        // The index is filled beside the accepts: wait for it, so its cost is in the split below.
        let index_wait = Instant::now();
        while store.search_index_lag().pending > 0 && index_wait.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let index_caught_up = index_wait.elapsed();
        let syncs = sync_profile(&store).zip(sync0).map(|(a, b)| (a.0 - b.0, a.1 - b.1, a.2 - b.2));
        let profile = writer_profile(&store).zip(profile0).map(|(after, before)| {
            std::array::from_fn::<u64, 9, _>(|i| after[i] - before[i])
        });
        drop(store_for_clients);
        let cpu = cpu_time() - cpu0;
        let mut latencies = latencies.lock().await.clone();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        // Close the store so the checkpointer folds the WAL into the database file before measuring it.
        drop(store);
        let deadline = Instant::now() + Duration::from_secs(10);
        while url.starts_with("sqlite://")
            && std::fs::metadata(format!("{}-wal", url.trim_start_matches("sqlite://"))).is_ok_and(|m| m.len() > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = sqlite_bytes(&url);
        println!(
            "herald store accept ({}): {:.0} messages/s durable, {:.1} µs CPU/msg, accept latency p50 {:.2} ms p99 {:.2} ms; \
             {} clients × {} per call, {} messages of {} bytes",
            if args.compose { "compose + store" } else { "store only, composed before timing" },
            args.count as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / args.count as f64,
            pct(0.5),
            pct(0.99),
            args.clients,
            args.per_call,
            args.count,
            message_bytes,
        );
        if let Some(us) = writer_us {
            println!(
                "writer thread: {us:.1} µs CPU per message (alone on a core it could commit {:.0} messages/s)",
                1e6 / us
            );
        }
        if let Some(profile) = profile {
            let per_message = |nanos: u64| nanos as f64 / 1e3 / args.count as f64;
            let total: u64 = profile.iter().sum();
            let split: Vec<String> = WriterPhase::ALL
                .iter()
                .zip(profile)
                .filter(|(_, nanos)| *nanos > 0)
                .map(|(phase, nanos)| format!("{} {:.1}", phase.as_str(), per_message(nanos)))
                .collect();
            println!(
                "writer µs per message (wall time on the writer thread, {:.1} in all): {}; full-text index caught up {:.0} ms after the last accept",
                per_message(total),
                split.join(", "),
                index_caught_up.as_secs_f64() * 1e3,
            );
        }
        if let Some((syncs, groups, nanos)) = syncs {
            println!(
                "syncer: {syncs} WAL syncs made {groups} group commits durable ({:.1} messages per sync), {:.3} ms per sync",
                args.count as f64 / syncs.max(1) as f64,
                nanos as f64 / 1e6 / syncs.max(1) as f64,
            );
        }
        if let Some(after) = after {
            println!(
                "stored: {:.0} bytes per message on disk (database + WAL growth / messages; the image and PDF once)",
                (after - before) as f64 / args.count as f64
            );
        }
        print_whole_run(
            args.count,
            started,
            &format!(" (accepting them: {:.2} s)", wall.as_secs_f64()),
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The SQLite syncer's (syncs, groups, nanoseconds) so far (`None` on PostgreSQL).
fn sync_profile(store: &Store) -> Option<(u64, u64, u64)> {
    match store {
        Store::Sqlite(store) => Some(store.sync_profile().snapshot()),
        Store::Postgres(_) => None,
    }
}

/// The SQLite writer's time per phase so far (`None` on PostgreSQL, whose writes are not one thread's).
pub(super) fn writer_profile(store: &Store) -> Option<[u64; 9]> {
    match store {
        Store::Sqlite(store) => Some(store.writer_profile().snapshot()),
        Store::Postgres(_) => None,
    }
}

pub(super) fn small(i: usize) -> NewMessage {
    NewMessage {
        source: Default::default(),
        id: uuid::Uuid::now_v7().to_string(),
        sender: "shop@example.test".into(),
        subject: format!("alert {i}"),
        recipients: vec![NewRecipient {
            address: format!("c{i}@example.test"),
            kind: RecipientKind::To,
        }],
        search_text: String::new(),
        raw: vec![RawSegment::Literal {
            bytes: Bytes::from(format!("Subject: alert {i}\r\n\r\nSomething happened.\r\n")),
            dot_safe: false,
        }],
        send_at: None,
        idempotency_key: None,
        batch_id: None,
        tags: vec![],
        metadata: serde_json::Value::Object(Default::default()),
        ignore_suppressions: false,
        unsubscribe_list: None,
    }
}
