//! `herald bench queries`: the dashboard's reads on a large archive.
//!
//! Fills a store with `--messages` varied messages (several recipients, tags, common and rare words, created
//! over 30 days, most delivered, some failed, deferred or still queued; 17% written in Chinese, Japanese,
//! Korean, Thai, Russian or German), fills per-minute activity for all 8 days it is kept, then times each
//! read the dashboard makes, `--runs` times: median, p95 and p99. Then it measures the full-text index's
//! size, and what the tokenizer before Herald's own (FTS5 `unicode61` / PostgreSQL's `simple` parser over
//! the raw text) would take for the same first 100,000 messages.

use std::{
    future::Future,
    pin::Pin,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use herald::{
    clock::{Clock, ManualClock, SystemClock},
    store::{
        AttemptOutcome, MessageStatus, NewMessage, NewRecipient, RecipientKind, RecipientResult,
        RecipientStatus, SearchQuery, Store, fold, index_terms,
    },
};

use super::{measure::runtime, store::small};

#[derive(Debug, clap::Args)]
pub struct QueriesArgs {
    /// Messages in the archive.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Timed runs of each query.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Store URL (e.g. postgres://…, which must be an empty database); default: a fresh SQLite file in a
    /// temporary directory.
    #[arg(long, alias = "database")]
    pub database_url: Option<String>,
    /// Keep the temporary SQLite database and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// Messages per accept call: one group commit, so one created_at shared by this many messages.
const PER_ACCEPT: usize = 500;
const DAY_MS: i64 = 86_400_000;

/// A deterministic hash of `i` and a salt (splitmix64), so that every run builds the same archive.
fn mix(i: usize, salt: u64) -> u64 {
    let mut z = (i as u64)
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The address `customer<k>` of 200,000 customers, each in about a dozen messages.
fn customer(k: u64) -> String {
    format!("customer{}@example{}.test", k % 200_000, k % 7)
}

/// Message `i`: the bench's small message, with 1 to 4 recipients, 0 to 2 tags and words to search.
/// "order" is in half the subjects; "zebra" in one message of 10,000.
fn varied(i: usize) -> NewMessage {
    let mut m = small(i);
    let h = mix(i, 1);
    m.recipients = (0..1 + h % 4)
        .map(|r| NewRecipient {
            address: if r == 3 && mix(i, 6) % 100 < 20 {
                // A shared mailbox in 5% of messages (a fifth of those with 4 recipients): 50,000 messages.
                "ops@example.test".into()
            } else {
                customer(mix(i, 10 + r))
            },
            kind: if r == 0 {
                RecipientKind::To
            } else {
                RecipientKind::Cc
            },
        })
        .collect();
    m.subject = match h % 10 {
        0..=4 => format!("Your order {} has shipped", 100_000 + i),
        5 | 6 => format!("Welcome aboard, customer {}", h % 200_000),
        7 => "Password reset requested".into(),
        _ => format!("Invoice {} is ready", 200_000 + i),
    };
    m.search_text = format!(
        "Hello {}, thank you for shopping with us.{}",
        m.recipients[0].address,
        if mix(i, 2).is_multiple_of(10_000) {
            " Your zebra plush is on its way."
        } else {
            ""
        }
    );
    if let Some((subject, body)) = localized(i) {
        m.subject = subject;
        m.search_text = format!("{} {body}", m.recipients[0].address);
    }
    let t = mix(i, 3) % 1_000;
    m.tags = match t {
        0 => vec!["vip".into(), "receipt".into()],
        1..=300 => vec!["receipt".into()],
        301..=500 => vec!["welcome".into()],
        501..=550 => vec!["password-reset".into()],
        551..=950 => vec!["newsletter".into(), "eu".into()],
        _ => vec![],
    };
    m
}

/// Message `i` in another language, for 17% of messages: Chinese 5%, Japanese 3%, Korean 2%, Thai 1%,
/// Russian 3%, German 3%. "熊猫" (and "zebra" with it) is in one Chinese message of 10,000.
fn localized(i: usize) -> Option<(String, String)> {
    let n = 100_000 + i;
    let rare = mix(i, 2).is_multiple_of(10_000);
    Some(match mix(i, 7) % 100 {
        0..=4 => (
            format!("您的订单 {n} 已发货 📦"),
            format!(
                "感谢您的购买，包裹正在路上，预计三天内送达。{}",
                if rare {
                    "您的熊猫玩偶 zebra 已经出发。"
                } else {
                    ""
                }
            ),
        ),
        5..=7 => (
            format!("ご注文 {n} の商品を発送しました"),
            "お届けまで2〜3日かかります。ご利用ありがとうございます。".into(),
        ),
        8 | 9 => (
            format!("주문 {n} 상품이 배송되었습니다"),
            "배송 조회는 아래 링크에서 확인하실 수 있습니다.".into(),
        ),
        10 => (
            format!("คำสั่งซื้อ {n} ของคุณถูกจัดส่งแล้ว"),
            "ขอบคุณที่สั่งซื้อสินค้ากับเรา".into(),
        ),
        11..=13 => (
            format!("Ваш заказ {n} отправлен"),
            "Спасибо за заказ в нашем магазине. Посылка уже в пути.".into(),
        ),
        14..=16 => (
            format!("Versandbestätigung für Ihre Bestellung {n}"),
            "Ihre Sendungsnummer folgt in Kürze. Vielen Dank für Ihren Einkauf.".into(),
        ),
        _ => return None,
    })
}

/// One timed read: runs against the store, answers how many rows it got.
type Query = Box<dyn Fn(Store) -> Pin<Box<dyn Future<Output = anyhow::Result<usize>>>>>;

fn timed<F, R>(read: F) -> Query
where
    F: Fn(Store) -> R + 'static,
    R: Future<Output = anyhow::Result<usize>> + 'static,
{
    Box::new(move |store| Box::pin(read(store)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: QueriesArgs) -> anyhow::Result<ExitCode> {
    if args.messages < PER_ACCEPT || args.runs == 0 {
        bail!("--messages must be at least {PER_ACCEPT} and --runs at least 1");
    }
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    runtime()?.block_on(async {
        let url = args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
        // The archive spans the last 30 days: the clock starts then and moves on with every accept.
        let now = SystemClock.now();
        let clock = ManualClock::new(now - 30 * DAY_MS);
        let step = 30 * DAY_MS / (args.messages / PER_ACCEPT) as i64;
        let store = Store::open(&url, Arc::new(clock.clone()))
            .await
            .with_context(|| format!("opening {url}"))?;
        let fill = Instant::now();
        let mut ids = Vec::with_capacity(args.messages);
        for start in (0..args.messages).step_by(PER_ACCEPT) {
            let batch: Vec<NewMessage> = (start..(start + PER_ACCEPT).min(args.messages))
                .map(|i| {
                    let mut m = varied(i);
                    // 3% scheduled for later than the bench ever reaches.
                    if mix(i, 4) % 100 < 3 {
                        m.send_at = Some(now + DAY_MS);
                    }
                    m
                })
                .collect();
            ids.extend(batch.iter().map(|m| m.id.clone()));
            store.accept(batch).await?;
            settle(&store, &clock).await?;
            clock.advance(Duration::from_millis(step as u64));
            if start % 100_000 == 0 && start > 0 {
                eprintln!("  {start} messages in {:.0} s", fill.elapsed().as_secs_f64());
            }
        }
        let filled = fill.elapsed();
        let counts = store.counts().await?;
        let activity_rows = fill_activity(&url, now).await?;
        println!(
            "archive: {} messages in {:.0} s ({}), counts {:?}; activity: {activity_rows} rows (every minute of 8 days)",
            args.messages,
            filled.as_secs_f64(),
            if url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" },
            MessageStatus::ALL
                .iter()
                .map(|s| format!("{s}={}", counts.get(s).unwrap_or(&0)))
                .collect::<Vec<_>>()
                .join(" "),
        );

        // The upkeep `herald serve` runs every minute (on PostgreSQL: ANALYZE of the tables that grew), so the
        // reads below are planned as a running server plans them, with or without autovacuum.
        let upkeep = Instant::now();
        run_upkeep(&store, &url).await?;
        println!("upkeep (as herald serve runs it): {:.1} s", upkeep.elapsed().as_secs_f64());

        let page = |q: SearchQuery| SearchQuery { limit: 50, ..q };
        // A cursor half way through the archive, as paging 10,000 pages down would reach.
        let middle = store
            .search(&page(SearchQuery {
                until: Some(now - 15 * DAY_MS),
                ..Default::default()
            }))
            .await?;
        let deep = middle.next_cursor.context("no cursor half way")?;
        let typical = customer(mix(args.messages / 2, 10));
        let probe = ids[ids.len() / 3].clone();
        let real_now = SystemClock.now();
        let search = |q: SearchQuery| {
            timed(move |s| {
                let q = q.clone();
                async move { Ok(s.search(&q).await?.items.len()) }
            })
        };
        let queries: Vec<(String, Query)> = vec![
            ("counts".into(), timed(|s| async move { Ok(s.counts().await?.len()) })),
            (
                "activity(last hour, 1 min)".into(),
                timed(move |s| async move { Ok(s.activity(real_now - 3_600_000, 60_000).await?.len()) }),
            ),
            (
                "activity(last day, 15 min)".into(),
                timed(move |s| async move { Ok(s.activity(real_now - DAY_MS, 900_000).await?.len()) }),
            ),
            ("search, no filter".into(), search(page(SearchQuery::default()))),
            (
                "search status=failed".into(),
                search(page(SearchQuery { status: Some(MessageStatus::Failed), ..Default::default() })),
            ),
            (
                format!("search to={typical}"),
                search(page(SearchQuery { to: Some(typical.clone()), ..Default::default() })),
            ),
            (
                "search to=ops@example.test (shared mailbox)".into(),
                search(page(SearchQuery { to: Some("ops@example.test".into()), ..Default::default() })),
            ),
            (
                "search tag=receipt (30%)".into(),
                search(page(SearchQuery { tag: Some("receipt".into()), ..Default::default() })),
            ),
            (
                "search tag=vip (0.1%)".into(),
                search(page(SearchQuery { tag: Some("vip".into()), ..Default::default() })),
            ),
            (
                "search text=order (42%)".into(),
                search(page(SearchQuery { text: Some("order".into()), ..Default::default() })),
            ),
            (
                "search text=发货 (CJK pair, 5%)".into(),
                search(page(SearchQuery { text: Some("发货".into()), ..Default::default() })),
            ),
            (
                "search text=货 (one CJK character, 5%)".into(),
                search(page(SearchQuery { text: Some("货".into()), ..Default::default() })),
            ),
            (
                "search text=熊猫 (CJK, 0.0005%)".into(),
                search(page(SearchQuery { text: Some("熊猫".into()), ..Default::default() })),
            ),
            (
                "search text=发货 zebra (mixed, rare)".into(),
                search(page(SearchQuery { text: Some("发货 zebra".into()), ..Default::default() })),
            ),
            (
                "search text=您的订单已发货 (6 common pairs, none: a number splits the run)".into(),
                search(page(SearchQuery { text: Some("您的订单已发货".into()), ..Default::default() })),
            ),
            (
                "search text=発送 (Japanese, 3%)".into(),
                search(page(SearchQuery { text: Some("発送".into()), ..Default::default() })),
            ),
            (
                "search text=배송 (Korean, 2%)".into(),
                search(page(SearchQuery { text: Some("배송".into()), ..Default::default() })),
            ),
            (
                "search text=จัดส่ง (Thai, 1%)".into(),
                search(page(SearchQuery { text: Some("จัดส่ง".into()), ..Default::default() })),
            ),
            (
                "search text=заказа (Russian stem, 3%)".into(),
                search(page(SearchQuery { text: Some("заказа".into()), ..Default::default() })),
            ),
            (
                "search text=bestätigung (German tail, 3%)".into(),
                search(page(SearchQuery { text: Some("bestätigung".into()), ..Default::default() })),
            ),
            (
                "search text=zebra (0.01%)".into(),
                search(page(SearchQuery { text: Some("zebra".into()), ..Default::default() })),
            ),
            (
                "search page half way down (cursor)".into(),
                search(page(SearchQuery { cursor: Some(deep.clone()), ..Default::default() })),
            ),
            (
                "search text=order, half way down (cursor)".into(),
                search(page(SearchQuery {
                    text: Some("order".into()),
                    cursor: Some(deep.clone()),
                    ..Default::default()
                })),
            ),
            (
                "message(id)".into(),
                timed(move |s| {
                    let id = probe.clone();
                    async move { Ok(usize::from(s.message(&id).await?.is_some())) }
                }),
            ),
        ];
        println!("{:<52} {:>9} {:>9} {:>9} {:>6}", "query", "p50 ms", "p95 ms", "p99 ms", "rows");
        let timing = Instant::now();
        for (name, query) in &queries {
            let rows = query(store.clone()).await?; // warm-up
            let mut times = Vec::with_capacity(args.runs);
            for _ in 0..args.runs {
                let t = Instant::now();
                query(store.clone()).await?;
                times.push(t.elapsed());
            }
            times.sort();
            let at = |q: f64| ms(times[((times.len() - 1) as f64 * q).round() as usize]);
            println!(
                "{name:<52} {:>9.2} {:>9.2} {:>9.2} {rows:>6}",
                ms(times[times.len() / 2]),
                at(0.95),
                at(0.99)
            );
        }
        println!(
            "timed {} queries x {} runs = {} reads in {:.1} s",
            queries.len(),
            args.runs,
            queries.len() * args.runs,
            timing.elapsed().as_secs_f64()
        );
        index_sizes(&url, args.messages.min(SIZE_SAMPLE)).await?;
        println!(
            "whole run: {} messages, {:.0} s (fill {:.0} s)",
            args.messages,
            started.elapsed().as_secs_f64(),
            filled.as_secs_f64()
        );
        if args.keep && args.database_url.is_none() {
            let kept = dir.keep();
            println!("kept {url} (in {})", kept.display());
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Claims what is due and records outcomes: 5% failed, 5% deferred (to retry after the bench), 3% left
/// sending (under a lease longer than the bench), the rest delivered.
async fn settle(store: &Store, clock: &ManualClock) -> anyhow::Result<()> {
    let claimed = store
        .claim("bench", Duration::from_secs(60 * 86_400), 1_000)
        .await?;
    let mut outcomes = Vec::with_capacity(claimed.len());
    for message in claimed {
        let h = message
            .id
            .bytes()
            .fold(0_u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
        let (status, code, retry_at) = match mix(h as usize, 5) % 100 {
            0..=4 => (RecipientStatus::Failed, 550, None),
            5..=9 => (
                RecipientStatus::Deferred,
                451,
                Some(clock.now() + 30 * DAY_MS),
            ),
            10..=12 => continue,
            _ => (RecipientStatus::Delivered, 250, None),
        };
        outcomes.push(AttemptOutcome {
            recipients: message
                .recipients
                .iter()
                .map(|r| RecipientResult {
                    position: r.position,
                    address: r.address.clone(),
                    status,
                    smtp_code: Some(code),
                    enhanced_status: None,
                    reply: Some(format!("{code} bench")),
                })
                .collect(),
            id: message.id,
            retry_at,
            detail: "bench".into(),
            counts_attempt: true,
        });
    }
    store.record("bench", outcomes).await?;
    Ok(())
}

/// Per-minute activity for every minute of the 8 days it is kept (16 shards on PostgreSQL), as a busy
/// installation would have: written directly, since the archive above was filled in a few minutes.
/// Runs the store's upkeep until, on PostgreSQL, it has analyzed the archive. PostgreSQL publishes the
/// per-table change counters the upkeep reads only some seconds after the writes (an idle connection flushes
/// them within 10 s), so the upkeep is repeated every second until `messages` has statistics (at most 60 s).
async fn run_upkeep(store: &Store, url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    store.maintain().await?;
    if url.starts_with("sqlite") {
        return Ok(());
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let analyzed: bool = sqlx::query_scalar(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND relname = 'messages'",
        )
        .fetch_one(&mut conn)
        .await?;
        if analyzed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the upkeep did not analyze messages within 60 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.maintain().await?;
    }
}

async fn fill_activity(url: &str, now: i64) -> anyhow::Result<u64> {
    use sqlx::Connection as _;
    let minutes = 8 * 24 * 60_i64;
    let first = (now / 60_000 - minutes) * 60_000;
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        sqlx::query(
            "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i + 1 < ?2)
             INSERT INTO activity (minute, shard, accepted, delivered, failed, deferred)
             SELECT ?1 + i * 60000, 0, 100, 90, 5, 5 FROM m WHERE true
             ON CONFLICT (minute, shard) DO NOTHING",
        )
        .bind(first)
        .bind(minutes)
        .execute(&mut conn)
        .await?;
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query(
            "INSERT INTO activity (minute, shard, accepted, delivered, failed, deferred)
             SELECT $1 + m * 60000, s, 100, 90, 5, 5
             FROM generate_series(0, $2 - 1) AS m, generate_series(0, $3 - 1) AS s
             ON CONFLICT (minute, shard) DO NOTHING",
        )
        .bind(first)
        .bind(minutes)
        .bind(16_i64)
        .execute(&mut conn)
        .await?;
    }
    Ok(minutes as u64 * if url.starts_with("sqlite") { 1 } else { 16 })
}

/// Messages over which the index with and without Herald's tokenizer is compared.
const SIZE_SAMPLE: usize = 100_000;

/// The three texts each store indexes for message `i`, as the bench built it: subject, addresses, body.
fn indexed_texts(i: usize) -> (String, String, String) {
    let mut m = varied(i);
    if let Some((subject, body)) = localized(i) {
        m.subject = subject;
        m.search_text = format!("{} {body}", m.recipients[0].address);
    }
    let mut addresses = m.sender.clone();
    for r in &m.recipients {
        addresses.push(' ');
        addresses.push_str(&r.address);
    }
    (m.subject, addresses, m.search_text)
}

/// Prints the full-text index's size in the store, and for the first `sample` messages what the index takes
/// with Herald's terms against the tokenizer used before (unicode61 / PostgreSQL `simple` over the text).
async fn index_sizes(url: &str, sample: usize) -> anyhow::Result<()> {
    use sqlx::{Connection as _, Row as _};
    let mb = |bytes: i64| bytes as f64 / 1e6;
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        let whole: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(length(block)), 0) FROM messages_fts_data")
                .fetch_one(&mut conn)
                .await?;
        let mut sizes = Vec::new();
        for (table, ours) in [("size_before", false), ("size_now", true)] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE VIRTUAL TABLE temp.{table} USING fts5 (subject, addresses, body, content = '',
                 tokenize = 'unicode61 remove_diacritics 2')"
            )))
            .execute(&mut conn)
            .await?;
            let mut tx = conn.begin().await?;
            for i in 0..sample {
                let (subject, addresses, body) = indexed_texts(i);
                let (subject, addresses, body) = if ours {
                    (
                        index_terms(&subject),
                        index_terms(&addresses),
                        index_terms(&body),
                    )
                } else {
                    (subject, addresses, body)
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO temp.{table} (rowid, subject, addresses, body) VALUES (?, ?, ?, ?)"
                )))
                .bind(i as i64 + 1)
                .bind(subject)
                .bind(addresses)
                .bind(body)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO temp.{table} ({table}) VALUES ('optimize')"
            )))
            .execute(&mut conn)
            .await?;
            let size: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT SUM(length(block)) FROM temp.{table}_data"
            )))
            .fetch_one(&mut conn)
            .await?;
            sizes.push(size);
        }
        println!(
            "full-text index (FTS5): {:.1} MB for the whole archive; first {sample} messages, optimized: {:.1} MB with Herald's terms against {:.1} MB with unicode61 over the text (x{:.2})",
            mb(whole),
            mb(sizes[1]),
            mb(sizes[0]),
            sizes[1] as f64 / sizes[0] as f64
        );
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let row = sqlx::query(
            "SELECT pg_relation_size('messages_search'), (SELECT SUM(pg_column_size(search)) FROM messages)::bigint",
        )
        .fetch_one(&mut conn)
        .await?;
        let (gin, vectors): (i64, i64) = (row.get(0), row.get(1));
        let mut sizes = Vec::new();
        for (table, make) in [
            ("size_before", "to_tsvector('simple', d)"),
            ("size_now", "array_to_tsvector(string_to_array(d, ' '))"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TEMP TABLE {table} (v tsvector NOT NULL)"
            )))
            .execute(&mut conn)
            .await?;
            for start in (0..sample).step_by(10_000) {
                let docs: Vec<String> = (start..(start + 10_000).min(sample))
                    .map(|i| {
                        let (subject, addresses, body) = indexed_texts(i);
                        let document = format!("{subject} {addresses} {body}");
                        if table == "size_now" {
                            index_terms(&document)
                        } else {
                            fold(&document)
                        }
                    })
                    .collect();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (v) SELECT {make} FROM UNNEST($1::text[]) AS t (d)"
                )))
                .bind(&docs)
                .execute(&mut conn)
                .await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE INDEX {table}_gin ON {table} USING GIN (v)"
            )))
            .execute(&mut conn)
            .await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_relation_size('{table}_gin'), (SELECT SUM(pg_column_size(v)) FROM {table})::bigint"
            )))
            .fetch_one(&mut conn)
            .await?;
            sizes.push((row.get::<i64, _>(0), row.get::<i64, _>(1)));
        }
        println!(
            "full-text index (GIN): {:.1} MB, tsvectors {:.1} MB for the whole archive; first {sample} messages: GIN {:.1} MB + tsvectors {:.1} MB with Herald's terms against GIN {:.1} MB + tsvectors {:.1} MB with the simple parser over the text (x{:.2} in all)",
            mb(gin),
            mb(vectors),
            mb(sizes[1].0),
            mb(sizes[1].1),
            mb(sizes[0].0),
            mb(sizes[0].1),
            (sizes[1].0 + sizes[1].1) as f64 / (sizes[0].0 + sizes[0].1) as f64
        );
    }
    Ok(())
}
