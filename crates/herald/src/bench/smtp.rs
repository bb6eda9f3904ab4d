//! `herald bench smtp`: sends the standard notification of ../shared/bench to a relay over N
//! pooled connections and prints msg/s and client CPU µs/msg, so it can be run beside
//! `smtp-source` against the same `smtp-sink` (scripts/bench-smtp does that).
//!
//! The messages are composed before timing starts (like the baseline's "send only" rows and like
//! smtp-source, which sends a prepared file): `--distinct` personalised notifications built with
//! herald-mime from the bench fixtures, cycled, each sent to its own `customer{i}@example.test`.
//! Their base64 parts are dot-safe segments, so the SMTP writer only scans headers and text.
//! `--message FILE.eml` sends one prepared file instead (scanned in full, as any raw input is).
//! CPU is `getrusage(RUSAGE_SELF)` user + system over the timed part (all threads), which includes
//! connect, EHLO and QUIT, as smtp-source's timing does.

use super::{
    fixtures::Fixtures,
    measure::{cpu_time, print_whole_run},
};
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use herald_mime::{Address, ComposeOptions, Mailbox, Message, Part};
use herald_smtp::{BodySegment, Client, Envelope, Pool, PoolConfig};

use herald::relay::{PASSWORD_ENV, Relay};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// One thread drives every connection (measured: the least CPU per message).
    Current,
    /// tokio's multi-thread runtime with 2 workers.
    Multi,
}

#[derive(Debug, clap::Args)]
pub struct SmtpArgs {
    /// The relay, e.g. smtp://127.0.0.1:2525?tls=none (see `herald send --help`).
    #[arg(long, value_name = "URL")]
    pub relay: String,
    /// Concurrent connections (the pool's cap).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 5000)]
    pub count: usize,
    /// The bench fixtures (default: ../shared/bench/fixtures from the current or the repository directory).
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Send this prepared message instead of composing notifications.
    #[arg(long, value_name = "FILE.eml", conflicts_with = "fixtures")]
    pub message: Option<PathBuf>,
    /// How many distinct personalised notifications to prepare and cycle.
    #[arg(long, default_value_t = 64)]
    pub distinct: usize,
    /// Messages per batch on one connection: each message's content goes out with the next one's
    /// commands (cross-message pipelining). 1 sends message by message.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// The async runtime.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Current)]
    pub runtime: RuntimeKind,
}

/// A prepared message: its segments and its sender.
struct Prepared {
    from: String,
    segments: Vec<BodySegment>,
    len: usize,
}

pub fn run(args: SmtpArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.count == 0 || args.distinct == 0 || args.batch == 0 {
        bail!("--connections, --count, --distinct and --batch must be at least 1");
    }
    let run_started = Instant::now();
    let mut relay = Relay::parse(&args.relay, std::env::var(PASSWORD_ENV).ok())?;
    let messages = Arc::new(match &args.message {
        Some(path) => vec![prepared_file(path)?],
        None => compose_notifications(&Fixtures::find(args.fixtures.as_deref())?, args.distinct)?,
    });
    let average_len = messages.iter().map(|m| m.len).sum::<usize>() / messages.len();
    relay.pool = PoolConfig {
        max_connections: args.connections,
        max_messages_per_connection: u32::MAX,
        ..relay.pool
    };
    let client = Client::new(relay.config.clone())?;

    let runtime = match args.runtime {
        RuntimeKind::Current => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        RuntimeKind::Multi => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    let (count, connections, batch) = (args.count, args.connections, args.batch);
    let cpu_before = cpu_time();
    let started = Instant::now();
    let (sent, failures, stats) = runtime.block_on(async move {
        let pool = Pool::new(client, relay.pool);
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (pool, next, messages) = (pool.clone(), next.clone(), messages.clone());
            workers.push(tokio::spawn(async move {
                let (mut sent, mut failures) = (0usize, Vec::new());
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= count {
                        break;
                    }
                    let indices = first..(first + batch).min(count);
                    let envelopes: Vec<Envelope> = indices
                        .clone()
                        .map(|i| {
                            let message = &messages[i % messages.len()];
                            Envelope::new(
                                message.from.as_str(),
                                [format!("customer{i}@example.test")],
                            )
                        })
                        .collect();
                    let items: Vec<(&Envelope, &[BodySegment])> = indices
                        .clone()
                        .zip(&envelopes)
                        .map(|(i, envelope)| {
                            (envelope, messages[i % messages.len()].segments.as_slice())
                        })
                        .collect();
                    for (i, result) in indices.zip(pool.send_batch(&items).await) {
                        match result {
                            Ok(delivery) if delivery.all_accepted() => sent += 1,
                            Ok(delivery) => {
                                failures.push(format!("message {i}: {:?}", delivery.recipients))
                            }
                            Err(error) => failures.push(format!("message {i}: {error}")),
                        }
                    }
                }
                (sent, failures)
            }));
        }
        let (mut sent, mut failures) = (0, Vec::new());
        for worker in workers {
            let (worker_sent, worker_failures) = worker.await.expect("bench worker");
            sent += worker_sent;
            failures.extend(worker_failures);
        }
        let stats = pool.stats();
        pool.close().await;
        (sent, failures, stats)
    });
    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);

    let rate = sent as f64 / wall.as_secs_f64();
    let cpu_per_message = cpu.as_secs_f64() * 1e6 / sent.max(1) as f64;
    println!(
        "herald bench smtp: {sent} of {count} messages ({average_len} bytes each on average) over {connections} connection(s), \
         {:?} runtime, batches of {batch}, {} sessions opened",
        args.runtime, stats.opened
    );
    println!(
        "{rate:.0} msg/s, {:.1} MB/s, client CPU {cpu_per_message:.1} µs/msg ({:.2} cores), {:.2} s",
        rate * average_len as f64 / 1e6,
        cpu.as_secs_f64() / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    // One line for scripts/bench-smtp.
    println!("RESULT msg_per_s={rate:.1} cpu_us_per_msg={cpu_per_message:.1} sent={sent}");
    print_whole_run(
        count,
        run_started,
        &format!(
            " ({sent} sent, {} failed; composing or reading them included)",
            failures.len()
        ),
    );
    if let Some(first) = failures.first() {
        eprintln!(
            "herald: {} messages failed; the first: {first}",
            failures.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn prepared_file(path: &Path) -> anyhow::Result<Prepared> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let len = bytes.len();
    Ok(Prepared {
        from: "bench@example.test".to_string(),
        segments: vec![BodySegment::new(Bytes::from(bytes))],
        len,
    })
}

/// Builds `distinct` notifications personalised as bench_py.py does (name, order number, To).
fn compose_notifications(fixtures: &Fixtures, distinct: usize) -> anyhow::Result<Vec<Prepared>> {
    let meta = &fixtures.notification;
    let text = fixtures.read_text(&meta.text_template)?;
    let html = fixtures.read_text(&meta.html_template)?;
    let png = Bytes::from(fixtures.read(&meta.inline_image_file)?);
    let pdf = Bytes::from(fixtures.read(&meta.attachment_file)?);
    let options = ComposeOptions {
        allow_8bit: false,
        message_id_domain: Some(meta.message_id_domain.clone()),
    };
    let from_address = Address::parse(&meta.from_addr).context("from_addr")?;
    let mut prepared = Vec::with_capacity(distinct);
    for i in 0..distinct {
        let name = format!("{} #{i}", meta.names[i % meta.names.len()]);
        let order = format!("ORD-{}", meta.order_no_base + i as u64);
        let personalise = |template: &str| {
            template
                .replace("{{name}}", &name)
                .replace("{{order_no}}", &order)
        };
        let to = Mailbox::new(
            Some(&name),
            Address::parse(&format!("customer{i}@example.test"))?,
        )?;
        let message = Message::builder()
            .from(Mailbox::new(Some(&meta.from_name), from_address.clone())?)
            .to(to)
            .subject(meta.subject_template.replace("{{order_no}}", &order))
            .text(personalise(&text))
            .html(personalise(&html))
            .part(
                Part::inline(&meta.inline_image_cid, "image/png", png.clone())?
                    .with_filename("logo.png")?,
            )
            .part(Part::attachment(
                &meta.attachment_filename,
                "application/pdf",
                pdf.clone(),
            )?)
            .build()?;
        let composed = message.compose(&options);
        let from = composed.envelope().sender.to_ascii()?;
        let segments: Vec<BodySegment> = composed
            .segments()
            .iter()
            .map(|s| BodySegment {
                bytes: s.bytes.clone(),
                dot_safe: s.dot_safe,
            })
            .collect();
        prepared.push(Prepared {
            from,
            segments,
            len: composed.len(),
        });
    }
    Ok(prepared)
}
