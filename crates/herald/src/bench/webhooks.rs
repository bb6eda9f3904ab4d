//! `herald bench webhooks` (issue 12): the webhook dispatcher against a local receiver (an HTTP server in
//! this process answering 200 at once), on a fresh SQLite store (or `--database`).
//!
//! 1. Throughput: `--count` messages are accepted (each a `message.accepted` event, so a delivery row written
//!    by the trigger), then the dispatcher starts and the time until the receiver has answered every event,
//!    signed, is measured: events/s.
//! 2. Latency: messages are accepted at `--rate` per second for `--seconds`, the dispatcher running; for each
//!    event, the time from its state change (the timeline line's `at`, the commit's time) to the receiver's
//!    2xx: p50/p99/max.
//! 3. Hot path (SQLite only): accepts/s of small messages by 32 clients on a store without the trigger (as
//!    before webhooks), with it and no endpoint, and with one endpoint (no dispatcher), `--rounds` times side
//!    by side; medians.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use herald::{
    clock::{Clock as _, SystemClock},
    events::{
        Settings,
        dispatch::{Dispatcher, EndpointsChanged},
        manage::{self, EndpointFields, Management},
    },
    store::Store,
};
use tokio::sync::watch;

use super::{
    measure::{print_whole_run, runtime},
    store::small,
};

#[derive(Debug, clap::Args)]
pub struct WebhooksArgs {
    /// Events of the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Events per second of the latency phase.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// HERALD_WEBHOOK_CONCURRENCY for the run.
    #[arg(long, default_value_t = herald::events::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Accepts per variant of the hot-path phase (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub hot_count: usize,
    /// Rounds of the hot-path phase (medians are quoted).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Store URL for the throughput and latency phases; default: a fresh SQLite file.
    #[arg(long)]
    pub database: Option<String>,
}

/// What the receiver saw: per event id, when it answered.
#[derive(Default)]
struct Seen {
    answered: Mutex<HashMap<String, (Instant, i64)>>,
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> &'static str {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The event's time, to the millisecond, from the payload (its `timestamp` is RFC 3339 with ms).
    let at = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
        .and_then(|t| herald::service::parse_rfc3339(&t).ok())
        .unwrap_or(0);
    seen.answered
        .lock()
        .expect("not poisoned")
        .entry(id)
        .or_insert((Instant::now(), at));
    "ok"
}

async fn start_receiver() -> anyhow::Result<(String, Arc<Seen>)> {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

async fn accept_small(store: &Store, count: usize, clients: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (client..count).step_by(clients) {
                store.accept(vec![small(i)]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: WebhooksArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.rate == 0 || args.seconds == 0 {
        bail!("--count, --rate and --seconds must be at least 1");
    }
    let started = Instant::now();
    let mut events_total = 0usize;
    runtime()?.block_on(async {
        let dir = tempfile::tempdir()?;
        let (store, _) = super::store::open_store(args.database.as_deref(), &dir).await?;
        let (url, seen) = start_receiver().await?;
        let management = Management {
            allow_private: true,
            sealer: None,
        };
        let now = SystemClock.now();
        let fields = EndpointFields {
            url: Some(url),
            events: Some(vec!["message.accepted".into()]),
            ..Default::default()
        };
        manage::create(&store, &management, fields, now)
            .await
            .context("creating the endpoint")?;
        let settings = Settings {
            allow_private: true,
            concurrency: args.concurrency,
            ..Settings::default()
        };

        // 1. Throughput: the outbox filled first, then drained.
        let t = Instant::now();
        accept_small(&store, args.count, 32).await?;
        let filled = t.elapsed();
        let (stop, stopped) = watch::channel(false);
        let dispatcher = Dispatcher::new(
            store.clone(),
            settings.clone(),
            management.clone(),
            "bench".into(),
            EndpointsChanged::default(),
        )?;
        let t = Instant::now();
        let task = tokio::spawn(dispatcher.run(stopped));
        while seen.answered.lock().expect("not poisoned").len() < args.count {
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the receiver did not get every event within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drained = t.elapsed();
        events_total += args.count;
        println!(
            "webhook throughput: {:.0} events/s signed to a local receiver ({} events in {:.2} s, \
             concurrency {}; the outbox was filled by {} accepts in {:.2} s first)",
            args.count as f64 / drained.as_secs_f64(),
            args.count,
            drained.as_secs_f64(),
            args.concurrency,
            args.count,
            filled.as_secs_f64()
        );

        // 2. Latency at a steady rate, the dispatcher running.
        seen.answered.lock().expect("not poisoned").clear();
        let total = (u64::from(args.rate) * args.seconds) as usize;
        let tick = Duration::from_millis(10);
        let per_tick = f64::from(args.rate) * tick.as_secs_f64();
        let t = Instant::now();
        let mut sent = 0usize;
        let mut ticker = tokio::time::interval(tick);
        let mut pending = Vec::new();
        while sent < total {
            ticker.tick().await;
            let due = ((t.elapsed().as_secs_f64() / tick.as_secs_f64()) * per_tick).ceil() as usize;
            while sent < due.min(total) {
                let store = store.clone();
                let i = args.count + sent;
                pending.push(tokio::spawn(async move { store.accept(vec![small(i)]).await }));
                sent += 1;
            }
        }
        for accept in pending {
            accept.await??;
        }
        let offered = t.elapsed();
        let wait = Instant::now();
        while seen.answered.lock().expect("not poisoned").len() < total {
            if wait.elapsed() > Duration::from_secs(120) {
                bail!("the receiver did not get every event of the latency phase");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(true);
        let _ = task.await;
        events_total += total;
        // Wall clock of the receiver's answer minus the event's time, both this machine's clock.
        let base_instant = Instant::now();
        let base_millis = SystemClock.now();
        let mut latencies: Vec<f64> = seen
            .answered
            .lock()
            .expect("not poisoned")
            .values()
            .map(|(answered, at)| {
                let answered_ms =
                    base_millis as f64 - (base_instant - *answered).as_secs_f64() * 1e3;
                (answered_ms - *at as f64).max(0.0)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        println!(
            "webhook latency at {} events/s: state change → receiver 2xx p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms \
             ({} events offered over {:.1} s)",
            args.rate,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0.0),
            total,
            offered.as_secs_f64()
        );
        drop(store);

        // 3. The accept hot path with and without the trigger (SQLite).
        if args.hot_count > 0 && args.database.is_none() {
            let mut rates: HashMap<&str, Vec<f64>> = HashMap::new();
            for _ in 0..args.rounds {
                for variant in ["no trigger (before webhooks)", "trigger, no endpoint", "trigger, one endpoint"] {
                    let dir = tempfile::tempdir()?;
                    let (store, url) = super::store::open_store(None, &dir).await?;
                    match variant {
                        "no trigger (before webhooks)" => {
                            use sqlx::Connection as _;
                            let mut db = sqlx::SqliteConnection::connect(&url).await?;
                            sqlx::query("DROP TRIGGER events_to_webhooks").execute(&mut db).await?;
                        }
                        "trigger, one endpoint" => {
                            let fields = EndpointFields {
                                url: Some("http://127.0.0.1:9/hook".into()),
                                ..Default::default()
                            };
                            manage::create(&store, &management, fields, SystemClock.now()).await?;
                        }
                        _ => {}
                    }
                    let took = accept_small(&store, args.hot_count, 32).await?;
                    events_total += args.hot_count;
                    rates
                        .entry(variant)
                        .or_default()
                        .push(args.hot_count as f64 / took.as_secs_f64());
                }
            }
            for variant in ["no trigger (before webhooks)", "trigger, no endpoint", "trigger, one endpoint"] {
                let mut r = rates.remove(variant).unwrap_or_default();
                r.sort_by(f64::total_cmp);
                println!(
                    "accept hot path, {variant}: median {:.0} accepts/s over {} rounds of {} (runs: {})",
                    r[r.len() / 2],
                    r.len(),
                    args.hot_count,
                    r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
                );
            }
        }
        anyhow::Ok(())
    })?;
    print_whole_run(
        events_total,
        started,
        " (events delivered plus hot-path accepts)",
    );
    Ok(ExitCode::SUCCESS)
}
