//! `herald bench store` and `herald bench queue`: the durable store's hot paths.
//!
//! - `store`: standard notifications (../shared/bench), personalized, shared parts encoded once, accepted
//!   durably by concurrent clients through the group commit; prints accepts/s, CPU µs per message, accept
//!   latency percentiles and bytes stored per message.
//! - `queue`: fills the store with many queued messages and measures claim latency and this process's
//!   resident memory at several queue lengths.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use herald::{
    clock::SystemClock,
    store::{NewMessage, NewRecipient, RawSegment, RecipientKind, SharedBlob, Store},
};
use tokio::sync::Mutex;

use super::{bench_compose::Workload, fixtures::Fixtures};

#[derive(Debug, clap::Args)]
pub struct BenchStoreArgs {
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

#[derive(Debug, clap::Args)]
pub struct BenchQueueArgs {
    /// Queue lengths at which to measure, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Messages claimed per claim (the engine's batch).
    #[arg(long, default_value_t = 64)]
    pub claim: u32,
    /// Store URL; default: a fresh SQLite file in a temporary directory (kept with --keep).
    #[arg(long)]
    pub database: Option<String>,
    /// Keep the temporary database and print its path (e.g. to time `herald serve` starting on it).
    #[arg(long)]
    pub keep: bool,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// This process's user+system CPU time.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc_rusage::Rusage>();
        libc_rusage::getrusage(0, &mut usage);
        usage
    };
    let tv = |t: libc_rusage::Timeval| Duration::new(t.sec as u64, (t.usec * 1000) as u32);
    tv(usage.utime) + tv(usage.stime)
}

/// The one libc call this file needs, declared here rather than adding a crate for it.
mod libc_rusage {
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Timeval {
        pub sec: i64,
        pub usec: i64,
    }
    #[repr(C)]
    pub struct Rusage {
        pub utime: Timeval,
        pub stime: Timeval,
        pub rest: [i64; 14],
    }
    unsafe extern "C" {
        pub fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
}

/// CPU time of this process's thread named `name` (the store writer), from /proc: on a busy machine this
/// tells the writer's own cost per message, and so its ceiling, whatever the other processes take.
fn thread_cpu(name: &str) -> Option<Duration> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            return Some(Duration::from_secs_f64(ticks / ticks_per_second));
        }
    }
    None
}

/// Resident memory of this process (VmRSS), in MB.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn open_store(
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
    }
}

pub fn run_store(args: BenchStoreArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.clients == 0 || args.per_call == 0 {
        bail!("--count, --clients and --per-call must be at least 1");
    }
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
        if let Some(after) = after {
            println!(
                "stored: {:.0} bytes per message on disk (database + WAL growth / messages; the image and PDF once)",
                (after - before) as f64 / args.count as f64
            );
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
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
    }
}

pub fn run_queue(args: BenchQueueArgs) -> anyhow::Result<ExitCode> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let dir = tempfile::tempdir()?;
    runtime()?.block_on(async {
        let (store, url) = open_store(args.database.as_deref(), &dir).await?;
        let mut filled = 0;
        for size in sizes {
            let fill_start = Instant::now();
            while filled < size {
                let n = (size - filled).min(5_000);
                store.accept((filled..filled + n).map(small).collect()).await?;
                filled += n;
            }
            let fill = fill_start.elapsed();
            // Claim latency: claim a batch and give it back, many times; median and p99.
            let mut times = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                let claimed = store.claim("bench", Duration::from_secs(60), args.claim).await?;
                times.push(t.elapsed());
                if claimed.len() != args.claim as usize {
                    bail!("claimed {} of {}", claimed.len(), args.claim);
                }
                store.release_leases("bench").await?;
            }
            times.sort();
            println!(
                "queue {size:>9}: claim of {} p50 {:.2} ms p99 {:.2} ms; resident memory {:.0} MB (filled in {:.1} s)",
                args.claim,
                times[times.len() / 2].as_secs_f64() * 1e3,
                times[times.len() * 99 / 100].as_secs_f64() * 1e3,
                rss_mb(),
                fill.as_secs_f64(),
            );
        }
        if args.keep {
            let kept = dir.keep();
            println!("kept {url} (in {})", kept.display());
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
