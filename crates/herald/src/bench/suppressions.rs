//! `herald bench suppressions`: accept throughput with an empty suppression list and with a large one
//! (1,000,000 addresses by default), side by side in one run (issue 12's figure). Two stores, filled the
//! same way but for the list, take turns: each round accepts `--count` alert-sized messages from
//! `--clients` concurrent clients on store A (no suppressions), then on store B (the full list); a share of
//! B's recipients (`--hit-percent`) are on its list, the rest miss it, so both paths of the check are timed.
//! Prints each round's rate, the median per store, and the whole run's count and wall time.

use std::{process::ExitCode, time::Instant};

use anyhow::bail;
use bytes::Bytes;
use herald::store::{
    NewMessage, NewRecipient, NewSuppression, RawSegment, RecipientKind, Store, SuppressionReason,
};

use super::{
    measure::{print_whole_run, runtime},
    store::open_store,
};

#[derive(Debug, clap::Args)]
pub struct SuppressionsArgs {
    /// Addresses on store B's suppression list.
    #[arg(long, default_value_t = 1_000_000)]
    pub suppressed: usize,
    /// Messages accepted per store per round.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Concurrent clients, each waiting for its commit before its next accept.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Rounds (each: store A, then store B).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Percent of B's recipients that are on its list.
    #[arg(long, default_value_t = 1)]
    pub hit_percent: usize,
    /// PostgreSQL admin URL: two fresh databases are made on it (default: two SQLite files).
    #[arg(long)]
    pub database: Option<String>,
}

/// Suppressed address `i` (store B holds `0..suppressed`).
fn listed(i: usize) -> String {
    format!("listed{i}@example.test")
}

fn message(round: usize, i: usize, suppressed_share: Option<(usize, usize)>) -> NewMessage {
    // B: every `100 / hit_percent`-th recipient is on the list; the others (and all of A's) are not.
    let address = match suppressed_share {
        Some((every, listed_count)) if every > 0 && i.is_multiple_of(every) => {
            listed((round * 7_919 + i) % listed_count)
        }
        _ => format!("r{round}-{i}@example.test"),
    };
    NewMessage {
        source: Default::default(),
        id: uuid::Uuid::now_v7().to_string(),
        sender: "shop@example.test".into(),
        subject: format!("alert {i}"),
        recipients: vec![NewRecipient {
            address,
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
        tags: vec!["alerts".into()],
        metadata: serde_json::Value::Object(Default::default()),
        ignore_suppressions: false,
        unsubscribe_list: None,
    }
}

/// Accepts `messages` from `clients` concurrent clients, one message per call; answers messages/s.
async fn accept_round(
    store: &Store,
    messages: Vec<NewMessage>,
    clients: usize,
) -> anyhow::Result<f64> {
    let count = messages.len();
    let mut lanes: Vec<Vec<NewMessage>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, m) in messages.into_iter().enumerate() {
        lanes[i % clients].push(m);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for lane in lanes {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for m in lane {
                store.accept(vec![m]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

async fn fresh_pg(admin: &str) -> anyhow::Result<String> {
    use sqlx::{Connection as _, Executor as _};
    let name = format!("herald_bench_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(&name);
    Ok(url.to_string())
}

/// Waits until neither store has background work left from the last round: SQLite's full-text index caught
/// up and its WAL checkpointed into the database file (PostgreSQL: a checkpoint). Without it a round ran
/// beside the other store's indexing and checkpoint fsyncs, and the order decided the figure (a first run
/// measured one store at 0.55x the other and, one round later, 1.9x).
async fn quiesce(stores: &[(&Store, &String)]) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    for (store, url) in stores {
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        while store.search_index_lag().pending > 0 {
            if Instant::now() > deadline {
                bail!("the full-text index of {url} did not catch up in 120 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(url).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await?;
        } else {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            sqlx::query("CHECKPOINT").execute(&mut conn).await?;
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn run(args: SuppressionsArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.clients == 0 || args.rounds == 0 || args.hit_percent > 100 {
        bail!("--count, --clients and --rounds must be at least 1, --hit-percent at most 100");
    }
    let started = Instant::now();
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    runtime()?.block_on(async {
        let (url_a, url_b) = match &args.database {
            Some(admin) => (Some(fresh_pg(admin).await?), Some(fresh_pg(admin).await?)),
            None => (None, None),
        };
        let (a, file_a) = open_store(url_a.as_deref(), &dir_a).await?;
        let (b, file_b) = open_store(url_b.as_deref(), &dir_b).await?;
        let fill = Instant::now();
        let chunk = 10_000;
        for start in (0..args.suppressed).step_by(chunk) {
            let entries = (start..(start + chunk).min(args.suppressed))
                .map(|i| NewSuppression {
                    address: listed(i),
                    scope: (i % 10 == 0).then(|| "newsletter".to_owned()),
                    reason: SuppressionReason::HardBounce,
                    source_message: None,
                    expires_at: None,
                })
                .collect();
            b.suppress(entries).await?;
        }
        a.maintain().await?;
        b.maintain().await?;
        println!(
            "store B: {} suppressed addresses written in {:.1} s; store A: none ({})",
            args.suppressed,
            fill.elapsed().as_secs_f64(),
            if args.database.is_some() { "PostgreSQL" } else { "SQLite" }
        );
        let every = 100usize.checked_div(args.hit_percent).unwrap_or(0);
        // A warm-up round on each, not counted: the first commits pay for page cache and prepared statements.
        accept_round(&a, (0..args.count / 10).map(|i| message(0, i, None)).collect(), args.clients).await?;
        accept_round(
            &b,
            (0..args.count / 10).map(|i| message(0, i, Some((every, args.suppressed.max(1))))).collect(),
            args.clients,
        )
        .await?;
        let (mut rates_a, mut rates_b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut total = 2 * (args.count / 10);
        for round in 1..=args.rounds {
            // Each store's round starts with both quiet (see `quiesce`), and the order alternates, so neither
            // store runs beside the other's background work or always goes first.
            let (mut rate_a, mut rate_b) = (0.0, 0.0);
            let order = if round % 2 == 1 { [false, true] } else { [true, false] };
            for on_b in order {
                quiesce(&[(&a, &file_a), (&b, &file_b)]).await?;
                if on_b {
                    let messages = (0..args.count)
                        .map(|i| message(round, i, Some((every, args.suppressed.max(1)))))
                        .collect();
                    rate_b = accept_round(&b, messages, args.clients).await?;
                } else {
                    let messages = (0..args.count).map(|i| message(round, i, None)).collect();
                    rate_a = accept_round(&a, messages, args.clients).await?;
                }
            }
            total += 2 * args.count;
            println!(
                "round {round}: A (0 suppressed) {rate_a:.0} accepts/s, B ({} suppressed) {rate_b:.0} accepts/s; {} messages each",
                args.suppressed, args.count
            );
            ratios.push(rate_b / rate_a);
            rates_a.push(rate_a);
            rates_b.push(rate_b);
        }
        let (median_a, median_b) = (median(&mut rates_a), median(&mut rates_b));
        let (low, high) = (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        let median_ratio = median(&mut ratios);
        println!(
            "median of {} rounds: A (0 suppressed) {median_a:.0} accepts/s, B ({} suppressed, {}% of recipients on the list) \
             {median_b:.0} accepts/s: B/A = {:.3}; median of the rounds' B/A {median_ratio:.3} ({low:.3}-{high:.3}); \
             {} clients, one message per accept",
            args.rounds,
            args.suppressed,
            args.hit_percent,
            median_b / median_a,
            args.clients
        );
        print_whole_run(total, started, &format!(" (+ {} suppressions written)", args.suppressed));
        // The two PostgreSQL databases made for the run go with it (the SQLite files with their temp dirs).
        drop((a, b));
        if let Some(admin) = &args.database {
            use sqlx::{Connection as _, Executor as _};
            let mut conn = sqlx::PgConnection::connect(admin).await?;
            for url in [&file_a, &file_b] {
                let name = url::Url::parse(url)?.path().trim_start_matches('/').to_owned();
                conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .await?;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
