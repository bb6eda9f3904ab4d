//! What VERP costs (issue 12, README "Bounces and complaints"): making the signed return paths, and what a
//! token per recipient would cost at the relay, i.e. one SMTP transaction per recipient instead of one per
//! message.
//!
//!     cargo run --release -p herald --example verp_cost -- [messages] [recipients] [rounds]
//!
//! Part 2 starts its own Postfix `smtp-sink` (from `HERALD_SMTP_SINK` or the PATH) on a free loopback port
//! and sends the same recipients both ways, side by side, `rounds` times: `messages` messages of
//! `recipients` recipients each in one transaction per message, then the same as one transaction per
//! recipient. Medians of the rounds, with the whole run's count and wall time.

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use herald::{bounce::Verp, link_tokens::LinkTokens, relay::Relay};
use herald_smtp::{BodySegment, Client, Envelope, Pool};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let run = Instant::now();
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let messages = args.next().transpose()?.unwrap_or(300);
    let recipients = args.next().transpose()?.unwrap_or(10);
    let rounds = args.next().transpose()?.unwrap_or(5);

    // 1. The return paths: one per transaction.
    let verp = Verp::new("bounce.example", LinkTokens::from_key(&[7u8; 32])?);
    let ids: Vec<String> = (0..200_000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut per_token = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let mut octets = 0;
        for (i, id) in ids.iter().enumerate() {
            octets += verp.return_path(id, &[i as u32 % 4]).expect("a uuid").len();
        }
        per_token.push(started.elapsed().as_secs_f64() * 1e6 / ids.len() as f64);
        assert!(octets > 0);
    }
    println!(
        "VERP return paths: {} per round, {rounds} rounds, median {:.2} µs each (one per transaction)",
        ids.len(),
        median(per_token)
    );

    // 2. One transaction per message vs one per recipient, to smtp-sink.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let sink = std::env::var("HERALD_SMTP_SINK").unwrap_or_else(|_| "smtp-sink".into());
    let mut sink = Command::new(sink)
        .args(["-u", "nobody", "-c", &format!("127.0.0.1:{port}"), "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let relay = Relay::parse(&format!("smtp://127.0.0.1:{port}?tls=none&pool=4"), None)?;
    let client = Client::new(relay.config.clone())?;
    let body: Arc<Vec<u8>> = Arc::new(
        format!(
            "From: Shop <noreply@shop.example>\r\nTo: list@example.net\r\nSubject: Your order\r\n\
             Message-ID: <m@shop.example>\r\n\r\n{}",
            "A line of a 20 KB notification body, as text.\r\n".repeat(440)
        )
        .into_bytes(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (per_message, per_recipient) = runtime.block_on(async move {
        let pool = Pool::new(client, relay.pool);
        let send_all = |envelopes: Vec<Envelope>| {
            let pool = pool.clone();
            let body = body.clone();
            async move {
                let envelopes = Arc::new(envelopes);
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let started = Instant::now();
                let mut workers = Vec::new();
                for _ in 0..4 {
                    let (pool, body, envelopes, next) =
                        (pool.clone(), body.clone(), envelopes.clone(), next.clone());
                    workers.push(tokio::spawn(async move {
                        let segments = [BodySegment::new(body.as_ref().clone())];
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(envelope) = envelopes.get(i) else {
                                break;
                            };
                            pool.send(envelope, &segments)
                                .await
                                .expect("smtp-sink takes it");
                        }
                    }));
                }
                for worker in workers {
                    worker.await.expect("a worker");
                }
                started.elapsed().as_secs_f64()
            }
        };
        let address = |m: usize, r: usize| format!("r{r}.m{m}@example.net");
        let (mut whole, mut split) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let grouped = (0..messages)
                .map(|m| {
                    Envelope::new(
                        format!("bounces+{}@bounce.example", m),
                        (0..recipients).map(|r| address(m, r)).collect::<Vec<_>>(),
                    )
                })
                .collect();
            whole.push(send_all(grouped).await);
            let single = (0..messages)
                .flat_map(|m| (0..recipients).map(move |r| (m, r)))
                .map(|(m, r)| {
                    Envelope::new(
                        format!("bounces+{m}.{r}@bounce.example"),
                        vec![address(m, r)],
                    )
                })
                .collect();
            split.push(send_all(single).await);
        }
        (whole, split)
    });
    let _ = sink.kill();
    let _ = sink.wait();
    let total = messages * recipients;
    let (a, b) = (median(per_message), median(per_recipient));
    println!(
        "{messages} messages x {recipients} recipients ({total} recipient deliveries, 20 KB body), 4 connections, {rounds} rounds side by side:"
    );
    println!(
        "  one transaction per message:   median {a:.3} s, {:.0} recipients/s ({messages} transactions)",
        total as f64 / a
    );
    println!(
        "  one transaction per recipient: median {b:.3} s, {:.0} recipients/s ({total} transactions), {:.1}x the time",
        total as f64 / b,
        b / a
    );
    println!(
        "whole run: {} messages, {:.1} s",
        rounds * (messages + total),
        run.elapsed().as_secs_f64()
    );
    Ok(())
}
