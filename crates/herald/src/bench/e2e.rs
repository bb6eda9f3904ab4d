//! `herald bench e2e`: end-to-end figures of a running `herald serve`, through its HTTP API, its store and its
//! delivery engine to an SMTP sink (scripts/bench-e2e starts everything and runs `smtp-source` beside it).
//!
//! Workloads:
//! - `standard`: the standard notification of ../shared/bench (personalized as in `bench compose`), posted
//!   through `POST /v1/messages` with the image and the PDF as base64 attachments, or through `POST
//!   /v1/batches` from a stored template (`--via batches`); reports messages/s from the first request until
//!   the last message is delivered (`herald_messages{status="delivered"}` on /metrics).
//! - `alert`: a small alert (subject + 1 KB text + 2 KB HTML) through `/v1/messages` from `--clients`
//!   concurrent clients; accepted/s, delivered/s and the accept latency (request sent → 202 read).
//! - `latency`: alerts at a steady `--rate` (open loop: each request leaves at its scheduled time) to a
//!   `herald serve` whose relay is the SMTP sink this command runs on `--sink`; for every message, the time
//!   from its 202 to the sink's 250 after its data, matched by the number in its subject.
//!
//! The HTTP client is a minimal HTTP/1.1 keep-alive client (one connection per client task), so that the
//! client takes as little of a shared 2-core machine as it can. One line is machine-readable (`RESULT
//! key=value ...`); the last gives the messages sent in all and the whole run's wall time.

use super::{
    fixtures::{Fixtures, Notification},
    measure::print_whole_run,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum E2eWorkload {
    Standard,
    Alert,
    Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `POST /v1/messages`, one message per request.
    Messages,
    /// `POST /v1/batches`, `--batch-size` recipients per request from a stored template.
    Batches,
}

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// What to send.
    #[arg(long, value_enum)]
    pub workload: E2eWorkload,
    /// The API of the running `herald serve` (loopback).
    #[arg(long, default_value = "127.0.0.1:8025")]
    pub api: SocketAddr,
    /// Bearer token for the API.
    #[arg(long, env = "HERALD_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Messages to send (standard, alert).
    #[arg(long, default_value_t = 4000)]
    pub count: usize,
    /// Concurrent HTTP clients (standard, alert).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How the standard notification is posted.
    #[arg(long, value_enum, default_value_t = Via::Messages)]
    pub via: Via,
    /// Recipients per `/v1/batches` request.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Messages per second (latency).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// How long to send at that rate (latency).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Where this command's SMTP sink listens (latency; the server's relay must point here).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub sink: SocketAddr,
    /// The bench fixtures (default: ../shared/bench/fixtures).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
}

pub fn run(args: E2eArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.clients == 0 || args.batch_size == 0 {
        bail!("--count, --clients and --batch-size must be at least 1");
    }
    // Two workers, as the server has: the client is light (no MIME work), so it shares the machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let messages = runtime.block_on(async move {
        match args.workload {
            E2eWorkload::Standard => standard(&args).await,
            E2eWorkload::Alert => alert(&args).await,
            E2eWorkload::Latency => latency(&args).await,
        }
    })?;
    print_whole_run(messages, started, "");
    Ok(ExitCode::SUCCESS)
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct Http {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
    auth: Option<String>,
}

impl Http {
    async fn connect(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the API at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream: BufReader::with_capacity(16 * 1024, stream),
            addr,
            auth: token.map(|t| format!("Authorization: Bearer {t}\r\n")),
        })
    }

    /// Sends one request and reads the whole response: (status, body).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}",
            self.addr,
            self.auth.as_deref().unwrap_or("")
        );
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(body) = body {
            out.extend_from_slice(body);
        }
        self.stream.get_mut().write_all(&out).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad HTTP status line {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the API closed the connection");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not supported by this bench client");
                }
            }
        }
        let mut body = vec![0; length.unwrap_or(0)];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }

    /// `herald_messages{status="..."}` from /metrics.
    async fn counts(&mut self) -> anyhow::Result<HashMap<String, u64>> {
        let (status, body) = self.request("GET", "/metrics", None).await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("herald_messages{status=\"")?;
                let (status, value) = rest.split_once("\"} ")?;
                Some((status.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }
}

/// The standard notification's fixtures, with the attachments' JSON made once.
struct Standard {
    meta: Notification,
    text: String,
    html: String,
    /// `[{...png...},{...pdf...}]`, serialized once.
    attachments_json: String,
}

impl Standard {
    fn load(fixtures: &Fixtures) -> anyhow::Result<Standard> {
        let read = |name: &str| fixtures.read(name);
        let meta = fixtures.notification.clone();
        let b64 = base64::engine::general_purpose::STANDARD;
        let attachments = json!([
            {
                "filename": "logo.png",
                "content_type": "image/png",
                "content_base64": b64.encode(read(&meta.inline_image_file)?),
                "inline": true,
                "content_id": meta.inline_image_cid,
            },
            {
                "filename": meta.attachment_filename,
                "content_type": "application/pdf",
                "content_base64": b64.encode(read(&meta.attachment_file)?),
            }
        ]);
        Ok(Standard {
            text: fixtures.read_text(&meta.text_template)?,
            html: fixtures.read_text(&meta.html_template)?,
            attachments_json: attachments.to_string(),
            meta,
        })
    }

    fn from(&self) -> String {
        format!("{} <{}>", self.meta.from_name, self.meta.from_addr)
    }

    /// Recipient `i`'s name, order number and address, as bench_py.py's `personalise`.
    fn person(&self, i: usize) -> (String, String, String) {
        let m = &self.meta;
        (
            format!("{} #{i}", m.names[i % m.names.len()]),
            format!("ORD-{}", m.order_no_base + i as u64),
            format!("customer{i}@example.test"),
        )
    }

    /// The `/v1/messages` body of message `i`.
    fn message(&self, i: usize) -> Vec<u8> {
        let (name, order, to) = self.person(i);
        let fill = |s: &str| s.replace("{{name}}", &name).replace("{{order_no}}", &order);
        let head = json!({
            "from": self.from(),
            "to": format!("{name} <{to}>"),
            "subject": self.meta.subject_template.replace("{{order_no}}", &order),
            "text": fill(&self.text),
            "html": fill(&self.html),
        })
        .to_string();
        // Splice the attachments in without serializing 80 KB of base64 per message.
        let mut body = head.into_bytes();
        body.pop();
        body.extend_from_slice(b",\"attachments\":");
        body.extend_from_slice(self.attachments_json.as_bytes());
        body.push(b'}');
        body
    }

    /// The `/v1/batches` body for recipients `range`.
    fn batch(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let recipients: Vec<_> = range
            .map(|i| {
                let (name, order, to) = self.person(i);
                json!({"to": format!("{name} <{to}>"), "data": {"name": name, "order_no": order}})
            })
            .collect();
        let head = json!({
            "template": TEMPLATE,
            "from": self.from(),
            "recipients": recipients,
        })
        .to_string();
        let mut body = head.into_bytes();
        body.pop();
        body.extend_from_slice(b",\"attachments\":");
        body.extend_from_slice(self.attachments_json.as_bytes());
        body.push(b'}');
        body
    }

    /// The template `/v1/batches` renders: the fixtures' `{{name}}` and `{{order_no}}` are Jinja already.
    fn template(&self) -> Vec<u8> {
        json!({
            "subject": self.meta.subject_template,
            "text": self.text,
            "html": self.html,
        })
        .to_string()
        .into_bytes()
    }
}

const TEMPLATE: &str = "bench-standard-notification";

/// A small alert: subject + 1 KB text + 2 KB HTML, no attachments.
fn alert_body(i: usize, subject: &str) -> Vec<u8> {
    let line = "Disk usage on db-7 crossed 90% at 03:14 UTC; writes may stall soon. ";
    let text: String = line.repeat(1024 / line.len() + 1)[..1024].to_owned();
    let para =
        "<p>Disk usage on <b>db-7</b> crossed 90% at 03:14 UTC; writes may stall soon.</p>\n";
    let html = format!(
        "<html><body>{}</body></html>",
        para.repeat(2048 / para.len())
    );
    json!({
        "from": "Monitoring <alerts@ops.example>",
        "to": format!("oncall{}@example.test", i % 97),
        "subject": subject,
        "text": text,
        "html": html,
    })
    .to_string()
    .into_bytes()
}

/// The `q`-quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Posts `bodies(i)` for `i` in `0..jobs` from `clients` connections; returns the accept latencies (ms).
async fn post_all(
    args: &E2eArgs,
    jobs: usize,
    path: &'static str,
    body: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients.min(jobs) {
        let next = next.clone();
        let body = body.clone();
        let mut http = Http::connect(args.api, args.token.as_deref()).await?;
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return anyhow::Ok(latencies);
                }
                let bytes = body(i);
                let start = Instant::now();
                let (status, response) = http.request("POST", path, Some(&bytes)).await?;
                latencies.push(start.elapsed().as_secs_f64() * 1e3);
                if status != 202 {
                    bail!(
                        "{path} answered {status}: {}",
                        String::from_utf8_lossy(&response)
                    );
                }
            }
        });
    }
    let mut all = Vec::with_capacity(jobs);
    while let Some(result) = tasks.join_next().await {
        all.extend(result??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

/// Polls /metrics until `target` messages are delivered; returns when that was seen (within 25 ms).
async fn wait_delivered(
    http: &mut Http,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = http.counts().await?;
        if counts.get("delivered").copied().unwrap_or(0) >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for deliveries: {counts:?} (want {target} delivered)");
        }
        // /metrics counts every message by status: polling it often would load the server under test.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Returns the number of messages it sent (as do `alert` and `latency`).
async fn standard(args: &E2eArgs) -> anyhow::Result<usize> {
    let standard = Arc::new(Standard::load(&Fixtures::find(args.fixtures.as_deref())?)?);
    let mut probe = Http::connect(args.api, args.token.as_deref()).await?;
    if args.via == Via::Batches {
        let (status, body) = probe
            .request(
                "PUT",
                &format!("/v1/templates/{TEMPLATE}"),
                Some(&standard.template()),
            )
            .await?;
        if status != 200 && status != 201 {
            bail!(
                "storing the template: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let before = probe.counts().await?.get("delivered").copied().unwrap_or(0);
    let start = Instant::now();
    let (latencies, requests) = match args.via {
        Via::Messages => {
            let s = standard.clone();
            let body: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync> = Arc::new(move |i| s.message(i));
            (
                post_all(args, args.count, "/v1/messages", body).await?,
                args.count,
            )
        }
        Via::Batches => {
            let size = args.batch_size;
            let count = args.count;
            let s = standard.clone();
            let body: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync> =
                Arc::new(move |j| s.batch(j * size..((j + 1) * size).min(count)));
            let requests = count.div_ceil(size);
            (
                post_all(args, requests, "/v1/batches", body).await?,
                requests,
            )
        }
    };
    let accepted = start.elapsed();
    // The probe sat idle while the clients posted: longer than the server's header timeout (10 s) on a slow
    // run, which closes an idle keep-alive connection. A fresh one costs a connect.
    let mut probe = Http::connect(args.api, args.token.as_deref()).await?;
    let done = wait_delivered(
        &mut probe,
        before + args.count as u64,
        Duration::from_secs(args.timeout_s),
    )
    .await?;
    let total = done - start;
    let rate = args.count as f64 / total.as_secs_f64();
    println!(
        "e2e standard notification via {:?}: {} messages accepted in {:.2} s ({:.0} msg/s, {requests} requests, \
         request latency p50 {:.1} ms p99 {:.1} ms), all delivered after {:.2} s: {rate:.0} msg/s end to end",
        args.via,
        args.count,
        accepted.as_secs_f64(),
        args.count as f64 / accepted.as_secs_f64(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        total.as_secs_f64(),
    );
    println!(
        "RESULT delivered_per_s={rate:.1} accepted_per_s={:.1} seconds={:.3} accept_p50_ms={:.2} accept_p99_ms={:.2}",
        args.count as f64 / accepted.as_secs_f64(),
        total.as_secs_f64(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
    );
    Ok(args.count)
}

async fn alert(args: &E2eArgs) -> anyhow::Result<usize> {
    let mut probe = Http::connect(args.api, args.token.as_deref()).await?;
    let before = probe.counts().await?.get("delivered").copied().unwrap_or(0);
    let start = Instant::now();
    let body: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync> =
        Arc::new(|i| alert_body(i, &format!("[ALERT] disk 90% on db-7 (#{i})")));
    let latencies = post_all(args, args.count, "/v1/messages", body).await?;
    let accepted = start.elapsed();
    // The probe sat idle while the clients posted: longer than the server's header timeout (10 s) on a slow
    // run, which closes an idle keep-alive connection. A fresh one costs a connect.
    let mut probe = Http::connect(args.api, args.token.as_deref()).await?;
    let done = wait_delivered(
        &mut probe,
        before + args.count as u64,
        Duration::from_secs(args.timeout_s),
    )
    .await?;
    let total = done - start;
    let accept_rate = args.count as f64 / accepted.as_secs_f64();
    let rate = args.count as f64 / total.as_secs_f64();
    println!(
        "e2e small alert, {} clients: {} accepted in {:.2} s ({accept_rate:.0} msg/s; accept latency p50 {:.2} ms, \
         p99 {:.2} ms, max {:.1} ms), all delivered after {:.2} s: {rate:.0} msg/s end to end",
        args.clients,
        args.count,
        accepted.as_secs_f64(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        total.as_secs_f64(),
    );
    println!(
        "RESULT delivered_per_s={rate:.1} accepted_per_s={accept_rate:.1} seconds={:.3} accept_p50_ms={:.2} accept_p99_ms={:.2}",
        total.as_secs_f64(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
    );
    Ok(args.count)
}

/// When the sink answered 250 to each message's data, by the number in its subject.
type Arrivals = Arc<Mutex<HashMap<usize, Instant>>>;

/// Per message: when its request left and when its 202 was read.
type Accepts = Arc<Mutex<Vec<Option<(Instant, Instant)>>>>;

/// How long the latency workload reuses an idle connection: well under the server's idle timeout.
const POOLED_IDLE_MAX: Duration = Duration::from_secs(5);

async fn latency(args: &E2eArgs) -> anyhow::Result<usize> {
    if !(args.rate > 0.0 && args.seconds > 0.0) {
        bail!("--rate and --seconds must be more than 0");
    }
    let arrivals: Arrivals = Arc::default();
    let listener = TcpListener::bind(args.sink)
        .await
        .with_context(|| format!("binding the sink to {}", args.sink))?;
    let sink = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(sink_session(stream, arrivals.clone()));
            }
        })
    };
    let n = (args.rate * args.seconds).round().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let pool: Arc<tokio::sync::Mutex<Vec<(Http, Instant)>>> = Arc::default();
    let accepted: Accepts = Arc::new(Mutex::new(vec![None; n]));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        ticker.tick().await;
        let pool = pool.clone();
        let accepted = accepted.clone();
        let (api, token) = (args.api, args.token.clone());
        tasks.spawn(async move {
            // A connection idle longer than the server keeps idle keep-alive connections (10 s by default)
            // may be closed under it: a request written to it would read no status line.
            let pooled = pool
                .lock()
                .await
                .pop()
                .filter(|(_, idle_since): &(Http, Instant)| idle_since.elapsed() < POOLED_IDLE_MAX);
            let mut http = match pooled {
                Some((http, _)) => http,
                None => Http::connect(api, token.as_deref()).await?,
            };
            let body = alert_body(i, &format!("latency probe {i}"));
            let sent = Instant::now();
            let (status, response) = http.request("POST", "/v1/messages", Some(&body)).await?;
            let answered = Instant::now();
            if status != 202 {
                bail!(
                    "/v1/messages answered {status}: {}",
                    String::from_utf8_lossy(&response)
                );
            }
            accepted.lock().expect("lock")[i] = Some((sent, answered));
            pool.lock().await.push((http, Instant::now()));
            anyhow::Ok(())
        });
        while let Some(result) = tasks.try_join_next() {
            result??;
        }
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let sending = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    while arrivals.lock().expect("lock").len() < n {
        if Instant::now() > deadline {
            bail!(
                "timed out: the sink saw {} of {n} messages",
                arrivals.lock().expect("lock").len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sink.abort();
    let arrivals = arrivals.lock().expect("lock").clone();
    let accepted = accepted.lock().expect("lock").clone();
    let mut end_to_end = Vec::with_capacity(n);
    let mut from_request = Vec::with_capacity(n);
    let mut accept = Vec::with_capacity(n);
    for (i, times) in accepted.iter().enumerate() {
        let (sent, answered) = times.with_context(|| format!("message {i} was not accepted"))?;
        let arrived = arrivals[&i];
        end_to_end.push(arrived.saturating_duration_since(answered).as_secs_f64() * 1e3);
        from_request.push(arrived.saturating_duration_since(sent).as_secs_f64() * 1e3);
        accept.push(answered.saturating_duration_since(sent).as_secs_f64() * 1e3);
    }
    for list in [&mut end_to_end, &mut from_request, &mut accept] {
        list.sort_by(f64::total_cmp);
    }
    let (p50, p99, max) = (
        quantile(&end_to_end, 0.5),
        quantile(&end_to_end, 0.99),
        end_to_end.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "e2e latency at {:.0} msg/s for {:.1} s ({n} messages, sent in {:.2} s): 202 → relay 250: p50 {p50:.2} ms, \
         p99 {p99:.2} ms, max {max:.1} ms; request → relay 250: p50 {:.2} ms, p99 {:.2} ms; accept: p50 {:.2} ms, \
         p99 {:.2} ms",
        args.rate,
        args.seconds,
        sending.as_secs_f64(),
        quantile(&from_request, 0.5),
        quantile(&from_request, 0.99),
        quantile(&accept, 0.5),
        quantile(&accept, 0.99),
    );
    println!(
        "RESULT p50_ms={p50:.3} p99_ms={p99:.3} max_ms={max:.3} request_p50_ms={:.3} request_p99_ms={:.3} accept_p50_ms={:.3} accept_p99_ms={:.3} achieved_rate={:.1}",
        quantile(&from_request, 0.5),
        quantile(&from_request, 0.99),
        quantile(&accept, 0.5),
        quantile(&accept, 0.99),
        n as f64 / sending.as_secs_f64(),
    );
    Ok(n)
}

/// A minimal SMTP sink session (PIPELINING): answers every command in order, and after each message's data
/// records the time against the number in `Subject: latency probe N`, then answers 250.
async fn sink_session(stream: TcpStream, arrivals: Arrivals) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    write.write_all(b"220 bench sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        let reply: &[u8] = match verb.as_slice() {
            b"EHLO" => b"250-bench sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            b"HELO" | b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => b"250 2.0.0 ok\r\n",
            b"QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            b"DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut number = None;
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    if number.is_none()
                        && let Some(rest) = line.strip_prefix(b"Subject: latency probe ")
                    {
                        number = std::str::from_utf8(rest)
                            .ok()
                            .and_then(|s| s.trim().parse::<usize>().ok());
                    }
                }
                if let Some(number) = number {
                    arrivals
                        .lock()
                        .expect("lock")
                        .insert(number, Instant::now());
                }
                b"250 2.0.0 queued\r\n"
            }
            _ => b"502 5.5.2 not here\r\n",
        };
        write.write_all(reply).await?;
    }
}
