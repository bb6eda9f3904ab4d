//! `herald bench submission`: figures of a running `herald serve`'s SMTP submission listener (issue 11;
//! scripts/bench-submission starts everything and runs `smtp-source` beside it).
//!
//! Workloads:
//! - `alerts`: `--count` small messages (`--size` bytes, 3 KB by default) from `--sessions` sessions, each a
//!   pipelined MAIL/RCPT/DATA then the message; accepted/s over the whole run and the latency from the end
//!   of the data (`.` written) to the `250` read, p50/p99.
//! - `idle`: opens `--sessions` sessions, says EHLO on each and holds them; prints the server's RSS
//!   (`--pid`) before and while they are open.
//! - `burst`: `--sessions` connection attempts at once; counts greetings (220), refusals (421) and failed
//!   connections, then checks that the server still answers.
//!
//! A machine-readable line (`RESULT key=value ...`) comes before the closing `whole run` line.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubmissionWorkload {
    Alerts,
    Idle,
    Burst,
}

#[derive(Debug, clap::Args)]
pub struct SubmissionArgs {
    #[arg(long, value_enum)]
    pub workload: SubmissionWorkload,
    /// The SMTP submission address of the running `herald serve`.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub smtp: SocketAddr,
    /// Messages to send (alerts).
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Sessions (alerts: concurrent senders; idle: held open; burst: connection attempts).
    #[arg(long, default_value_t = 32)]
    pub sessions: usize,
    /// Message size in bytes (alerts).
    #[arg(long, default_value_t = 3072)]
    pub size: usize,
    /// The server's process id, to read its resident memory (idle).
    #[arg(long)]
    pub pid: Option<u32>,
    /// How long the idle sessions are held before measuring.
    #[arg(long, default_value = "3s", value_parser = herald::queue::retry::parse_duration)]
    pub hold: Duration,
}

pub fn run(args: SubmissionArgs) -> anyhow::Result<ExitCode> {
    if args.sessions == 0 || args.count == 0 {
        bail!("--sessions and --count must be at least 1");
    }
    let started = Instant::now();
    let messages = super::measure::runtime()?.block_on(async move {
        match args.workload {
            SubmissionWorkload::Alerts => alerts(&args).await,
            SubmissionWorkload::Idle => idle(&args).await.map(|()| 0),
            SubmissionWorkload::Burst => burst(&args).await.map(|()| 0),
        }
    })?;
    super::measure::print_whole_run(messages, started, "");
    Ok(ExitCode::SUCCESS)
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

/// One whole reply: its last line.
async fn reply(reader: &mut Reader) -> anyhow::Result<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.trim_end().to_owned());
        }
    }
}

async fn session(smtp: SocketAddr) -> anyhow::Result<(Reader, tokio::net::tcp::OwnedWriteHalf)> {
    let stream = TcpStream::connect(smtp)
        .await
        .with_context(|| format!("connecting to {smtp}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let greeting = reply(&mut reader).await?;
    if !greeting.starts_with("220") {
        bail!("greeting: {greeting}");
    }
    write.write_all(b"EHLO bench.local\r\n").await?;
    reply(&mut reader).await?;
    Ok((reader, write))
}

/// A small alert of about `size` bytes, numbered.
fn alert(n: usize, size: usize) -> Vec<u8> {
    let mut text = format!(
        "From: monitor@example.com\r\nTo: ops@example.com\r\nSubject: alert {n}: disk almost full\r\n\
         Message-ID: <alert-{n}-{}@example.com>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        std::process::id()
    );
    let mut line = 0;
    while text.len() + 80 < size {
        text.push_str(&format!(
            "host web-{line:03}: /var at 91% ({n}), inodes 40%, load 1.2 1.1 0.9 ........\r\n"
        ));
        line += 1;
    }
    text.push_str(".\r\n");
    text.into_bytes()
}

async fn alerts(args: &SubmissionArgs) -> anyhow::Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.sessions {
        let (next, smtp, count, size) = (next.clone(), args.smtp, args.count, args.size);
        tasks.push(tokio::spawn(async move {
            let (mut reader, mut write) = session(smtp).await?;
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                write
                    .write_all(
                        b"MAIL FROM:<monitor@example.com>\r\nRCPT TO:<ops@example.com>\r\nDATA\r\n",
                    )
                    .await?;
                for _ in 0..3 {
                    reply(&mut reader).await?;
                }
                let message = alert(n, size);
                write.write_all(&message).await?;
                let sent = Instant::now();
                let answer = reply(&mut reader).await?;
                if !answer.starts_with("250") {
                    bail!("message {n} refused: {answer}");
                }
                latencies.push(sent.elapsed());
            }
            write.write_all(b"QUIT\r\n").await?;
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.count);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = start.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "alerts: {} messages of {} B over {} sessions in {:.2} s: {:.0} accepted/s; end of DATA → 250: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        args.size,
        args.sessions,
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!(
        "RESULT count={} wall_s={:.3} accepted_per_s={:.1} p50_ms={:.3} p99_ms={:.3}",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64(),
        ms(at(0.5)),
        ms(at(0.99)),
    );
    Ok(latencies.len())
}

/// Resident memory of process `pid` in MB (Linux `/proc`).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn idle(args: &SubmissionArgs) -> anyhow::Result<()> {
    let before = args.pid.and_then(rss_mb);
    let start = Instant::now();
    let mut open = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        open.push(session(args.smtp).await?);
    }
    let opened = start.elapsed();
    tokio::time::sleep(args.hold).await;
    let during = args.pid.and_then(rss_mb);
    // Every one is still served: a NOOP on each.
    for (reader, write) in &mut open {
        write.write_all(b"NOOP\r\n").await?;
        let answer = reply(reader).await?;
        if !answer.starts_with("250") {
            bail!("NOOP on an idle session: {answer}");
        }
    }
    let wall = start.elapsed();
    drop(open);
    let show = |mb: Option<f64>| mb.map_or("?".to_owned(), |mb| format!("{mb:.1}"));
    println!(
        "idle: {} sessions opened in {:.2} s and held {:?}; server RSS {} MB before, {} MB with them open; whole run {:.2} s",
        args.sessions,
        opened.as_secs_f64(),
        args.hold,
        show(before),
        show(during),
        wall.as_secs_f64()
    );
    println!(
        "RESULT sessions={} rss_before_mb={} rss_open_mb={} wall_s={:.3}",
        args.sessions,
        show(before),
        show(during),
        wall.as_secs_f64()
    );
    Ok(())
}

async fn burst(args: &SubmissionArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let smtp = args.smtp;
        tasks.push(tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(smtp)).await
                {
                    Ok(Ok(stream)) => stream,
                    _ => return (None, None),
                };
            let (read, write) = stream.into_split();
            let mut reader = BufReader::new(read);
            let first = tokio::time::timeout(Duration::from_secs(30), reply(&mut reader))
                .await
                .ok()
                .and_then(Result::ok);
            // Held until every attempt has its answer, so the greeted ones fill the cap.
            (first, Some((reader, write)))
        }));
    }
    let (mut greeted, mut refused, mut failed) = (0, 0, 0);
    let mut held = Vec::new();
    for task in tasks {
        let (first, connection) = task.await?;
        match first.as_deref() {
            Some(line) if line.starts_with("220") => greeted += 1,
            Some(line) if line.starts_with("421") => refused += 1,
            _ => failed += 1,
        }
        held.extend(connection);
    }
    let wall = start.elapsed();
    drop(held);
    // The server survived and serves the next client.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut reader, mut write) = session(args.smtp).await?;
    write.write_all(b"QUIT\r\n").await?;
    let alive = reply(&mut reader).await?.starts_with("221");
    println!(
        "burst: {} connection attempts in {:.2} s: {greeted} greeted (220), {refused} refused (421 4.3.2), {failed} failed to connect or read; server answers afterwards: {alive}",
        args.sessions,
        wall.as_secs_f64()
    );
    println!(
        "RESULT attempts={} greeted={greeted} refused={refused} failed={failed} alive={alive} wall_s={:.3}",
        args.sessions,
        wall.as_secs_f64()
    );
    Ok(())
}
