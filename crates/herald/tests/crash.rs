//! Crash tests on real `herald serve` processes: SIGKILL under load, restart on the same database, and
//! every message that was acknowledged (202) must reach the relay (lost = 0). Duplicates are possible by
//! design (at-least-once: a message on the wire when the process died is sent again) and are counted.
//! On PostgreSQL: two nodes on one database share 10,000 messages with none sent twice; then one node is
//! killed mid-run and the other finishes its work.

mod common;

use std::{
    collections::{HashMap, HashSet},
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use herald_testkit::{ServerConfig, TestServer};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One `herald serve` process.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    async fn start(database_url: &str, relay: &TestServer) -> Node {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env("HERALD_DATABASE_URL", database_url)
            .env(
                "HERALD_RELAY_URL",
                format!("smtp://127.0.0.1:{}?tls=none", relay.port()),
            )
            .env("HERALD_RETRY", "1s")
            // A short lease so a killed node's claimed messages return within the test (settle waits 60 s), yet long
            // enough that a live node on a loaded 2-core machine always finishes a delivery inside it (or it would
            // be resent: leases are not renewed). 10 s proved too short when other builds shared the machine.
            .env("HERALD_LEASE", "25s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start herald serve");
        let node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", node.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "herald serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown code runs, exactly like a crash or the OOM killer.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "herald serve exits 0 on SIGTERM, got {status}"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts numbered messages from `clients` concurrent clients to the nodes (round-robin) until `stop`,
/// recording the ids answered 202.
async fn load(
    label: &'static str,
    bases: Vec<String>,
    clients: usize,
    limit: usize,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (bases, acknowledged, next, stop) = (
            bases.clone(),
            acknowledged.clone(),
            next.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                let base = &bases[(c + n) % bases.len()];
                let body = json!({"from": "shop@example.test", "to": format!("c{n}@example.test"),
                                  "subject": format!("crash test {label}-{n}"), "text": "x"});
                if let Ok(response) = client
                    .post(format!("{base}/v1/messages"))
                    .json(&body)
                    .send()
                    .await
                    && response.status().as_u16() == 202
                    && let Ok(accepted) = response.json::<Value>().await
                {
                    acknowledged
                        .lock()
                        .await
                        .push(accepted["id"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acknowledged).unwrap().into_inner()
}

fn subject_of(content: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(content);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
}

/// Waits until every acknowledged message is delivered per the API of `base`, then compares with what the
/// relay received. Returns (lost, duplicates).
async fn settle(base: &str, relay: &TestServer, acknowledged: &[String]) -> (usize, usize) {
    let client = reqwest::Client::new();
    let mut pending: HashSet<&String> = acknowledged.iter().collect();
    let mut subjects: HashMap<String, String> = HashMap::new();
    let start = Instant::now();
    while !pending.is_empty() && start.elapsed() < Duration::from_secs(60) {
        let mut done = Vec::new();
        for id in pending.iter().take(200) {
            let view: Value = client
                .get(format!("{base}/v1/messages/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if view["status"] == "delivered" {
                subjects.insert((*id).clone(), view["subject"].as_str().unwrap().to_owned());
                done.push(*id);
            }
        }
        for id in done {
            pending.remove(id);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    for tx in relay.transactions() {
        if let Some(subject) = subject_of(&tx.content) {
            *received.entry(subject).or_default() += 1;
        }
    }
    let lost_ids: Vec<&String> = acknowledged
        .iter()
        .filter(|id| subjects.get(*id).is_none_or(|s| !received.contains_key(s)))
        .collect();
    for id in lost_ids.iter().take(3) {
        let view: Value = client
            .get(format!("{base}/v1/messages/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        eprintln!("LOST {id}: {view:#}");
    }
    let lost = lost_ids.len();
    let duplicates = received.values().map(|n| n - 1).sum();
    (lost, duplicates)
}

/// The two tests load the machine fully; run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_under_load_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let relay = TestServer::start(ServerConfig::default()).await;
    let mut node = Node::start(&url, &relay).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        "sqlite",
        vec![node.base.clone()],
        16,
        usize::MAX,
        stop.clone(),
    ));
    // Kill once a good number of messages were acknowledged and delivery is in full swing.
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let page: Value = client
            .get(format!("{}/v1/messages?limit=1000", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["items"].as_array().unwrap().len() >= 1000
            || start.elapsed() > Duration::from_secs(20)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();
    stop.store(true, Ordering::Relaxed);
    let acknowledged = loader.await.unwrap();
    assert!(
        acknowledged.len() >= 500,
        "the load ran: {} acknowledged",
        acknowledged.len()
    );

    let node = Node::start(&url, &relay).await;
    let (lost, duplicates) = settle(&node.base, &relay, &acknowledged).await;
    eprintln!(
        "crash test (SQLite): acknowledged {}, lost {lost}, duplicates {duplicates} (sent again after the kill)",
        acknowledged.len()
    );
    if lost > 0 {
        let keep = dir.keep();
        eprintln!("kept database at {}", keep.display());
    }
    assert_eq!(
        lost, 0,
        "every acknowledged message is delivered after the restart"
    );
    node.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_share_the_work_and_survive_a_kill() {
    let _serial = SERIAL.lock().await;
    let Some(url) = common::fresh_postgres_database().await else {
        return;
    };
    let relay = TestServer::start(ServerConfig::default()).await;
    // Normal operation: 10,000 messages through two nodes, none sent twice.
    let a = Node::start(&url, &relay).await;
    let b = Node::start(&url, &relay).await;
    let acknowledged = load(
        "two-nodes",
        vec![a.base.clone(), b.base.clone()],
        16,
        10_000,
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    assert_eq!(acknowledged.len(), 10_000);
    let (lost, duplicates) = settle(&a.base, &relay, &acknowledged).await;
    eprintln!(
        "two nodes, normal operation: acknowledged 10000, lost {lost}, duplicates {duplicates}"
    );
    assert_eq!(
        (lost, duplicates),
        (0, 0),
        "no message lost and none sent twice"
    );
    let by_connection: HashSet<usize> = relay.transactions().iter().map(|t| t.connection).collect();
    assert!(by_connection.len() >= 2, "both nodes delivered");

    // One node killed mid-run: the other (and its leases' expiry) finish the work.
    let mut b = b;
    let before = relay.transactions().len();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        "one-killed",
        vec![a.base.clone(), b.base.clone()],
        16,
        3_000,
        stop.clone(),
    ));
    let start = Instant::now();
    while relay.transactions().len() < before + 500 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.kill();
    let acknowledged = loader.await.unwrap();
    let (lost, duplicates) = settle(&a.base, &relay, &acknowledged).await;
    eprintln!(
        "two nodes, one killed: acknowledged {}, lost {lost}, duplicates {duplicates}",
        acknowledged.len()
    );
    assert_eq!(lost, 0);
    a.terminate();
}
