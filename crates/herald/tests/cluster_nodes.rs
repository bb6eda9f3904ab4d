//! Cluster-wide relay limits on real processes: three `herald serve` nodes on one PostgreSQL database,
//! default settings (no `HERALD_LEASE`: the nodes learn of each other from the default heartbeat), one
//! herald-testkit relay that counts what arrives. `rate=100`: the relay sees 90–105 messages per second over
//! 30 s (not 300); `pool=6`: never more than 6 sessions at once in all (not 18).

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::Child,
    time::{Duration, Instant},
};

use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};
use serde_json::json;

/// Both tests start three nodes each: one at a time on this small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One `herald serve` process.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    async fn start(database_url: &str, relay_url: &str) -> Node {
        let addr = common::serve::free_addr();
        let mut command = common::serve::serve_command(addr, database_url);
        command.env("HERALD_RELAY_URL", relay_url);
        Node {
            child: common::serve::spawn_ready(command, addr).await,
            base: format!("http://{addr}"),
        }
    }

    /// The live-node count this node works with (its `herald_live_nodes` gauge), once it has one.
    async fn live_nodes(&self) -> Option<u32> {
        let metrics = reqwest::get(format!("{}/metrics", self.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("herald_live_nodes "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u32)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts three nodes and waits until every one of them counts three live nodes (within two heartbeats).
async fn three_nodes(database_url: &str, relay_url: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(database_url, relay_url).await);
    }
    let start = Instant::now();
    loop {
        let mut counts = Vec::new();
        for node in &nodes {
            counts.push(node.live_nodes().await);
        }
        if counts.iter().all(|count| *count == Some(3)) {
            eprintln!(
                "all three nodes count 3 live nodes after {:?}",
                start.elapsed()
            );
            return nodes;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the nodes did not all see each other within two heartbeats: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Queues `count` messages in batches of 500 (one template, one commit per batch), round-robin over the
/// nodes, so that the queue fills far faster than the relay limits let it drain; returns how many were queued.
async fn post(nodes: &[Node], label: &str, count: usize) -> usize {
    let client = reqwest::Client::new();
    let template = json!({"subject": "{{ label }} {{ n }}", "text": "x"});
    let response = client
        .put(format!("{}/v1/templates/cluster", nodes[0].base))
        .json(&template)
        .send()
        .await
        .expect("store the template");
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    let mut queued = 0;
    for (index, start) in (0..count).step_by(500).enumerate() {
        let recipients: Vec<_> = (start..count.min(start + 500))
            .map(|n| json!({"to": format!("c{n}@example.test"), "data": {"label": label, "n": n}}))
            .collect();
        let batch =
            json!({"template": "cluster", "from": "shop@example.test", "recipients": recipients});
        let response = client
            .post(format!("{}/v1/batches", nodes[index % nodes.len()].base))
            .json(&batch)
            .send()
            .await
            .expect("post a batch");
        assert_eq!(
            response.status().as_u16(),
            202,
            "{:?}",
            response.text().await
        );
        queued += recipients.len();
    }
    queued
}

/// Posted messages (`{label} {n}` for n below `count`) the relay never accepted with a 250.
fn missing(relay: &TestServer, label: &str, count: usize) -> usize {
    let accepted: std::collections::HashSet<String> = relay
        .transactions()
        .iter()
        .filter(|t| t.final_reply.starts_with("250"))
        .filter_map(|t| {
            String::from_utf8_lossy(&t.content)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect();
    (0..count)
        .filter(|n| !accepted.contains(&format!("{label} {n}")))
        .count()
}

/// Messages the relay received more than once (by subject).
fn duplicates(relay: &TestServer) -> usize {
    let mut subjects = std::collections::HashSet::new();
    relay
        .transactions()
        .iter()
        .filter(|t| {
            let content = String::from_utf8_lossy(&t.content).into_owned();
            let subject = content
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned));
            !subjects.insert(subject)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_a_rate_of_100() {
    let _serial = SERIAL.lock().await;
    let Some(url) = common::fresh_postgres_database().await else {
        return;
    };
    let relay = TestServer::capture().await;
    let relay_url = format!("smtp://127.0.0.1:{}?tls=none&rate=100", relay.port());
    let nodes = three_nodes(&url, &relay_url).await;
    // More than 30 s at 100/s are queued before the window starts.
    let posted = post(&nodes, "rate", 4_000).await;
    assert_eq!(posted, 4_000);
    // Measure after a second of delivery, over 30 s, with one-second samples to show the spread.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let first = relay.transactions().len();
    let mut per_second = Vec::new();
    let mut last = first;
    for second in 1..=30 {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let now = relay.transactions().len();
        per_second.push(now - last);
        last = now;
    }
    let window = started.elapsed();
    let received = last - first;
    let rate = received as f64 / window.as_secs_f64();
    eprintln!(
        "three nodes, rate=100: the relay received {received} messages in {window:?} = {rate:.1}/s \
         (per second: min {}, max {}); {} received in all of {posted} posted, {} of them twice",
        per_second.iter().min().unwrap(),
        per_second.iter().max().unwrap(),
        relay.transactions().len(),
        duplicates(&relay)
    );
    assert!(
        last < first + 4_000 - 100,
        "the queue must not run dry during the window"
    );
    assert!(
        (90.0..=105.0).contains(&rate),
        "rate=100 is a cluster total: {rate:.1}/s over {window:?}"
    );
    let by_connection: std::collections::HashSet<usize> =
        relay.transactions().iter().map(|t| t.connection).collect();
    assert!(by_connection.len() >= 3, "every node delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_never_open_more_than_pool_6_sessions() {
    let _serial = SERIAL.lock().await;
    let Some(url) = common::fresh_postgres_database().await else {
        return;
    };
    // Each final reply takes 20 ms, so a node's sessions stay busy while mail is waiting.
    let relay = TestServer::start(ServerConfig::default().fault(Fault::new(
        When::DataEnd,
        Action::Delay(Duration::from_millis(20), "250 2.0.0 Ok".into()),
    )))
    .await;
    let relay_url = format!("smtp://127.0.0.1:{}?tls=none&pool=6", relay.port());
    let nodes = three_nodes(&url, &relay_url).await;
    let started = Instant::now();
    let posting = post(&nodes, "pool", 3_000);
    let mut most_open = 0;
    let sampler = async {
        while relay.transactions().len() < 3_000 && started.elapsed() < Duration::from_secs(90) {
            most_open = most_open.max(relay.open_connections());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (posted, ()) = tokio::join!(posting, sampler);
    assert_eq!(posted, 3_000);
    // The relay records a transaction before its (20 ms delayed) final reply: wait for the last replies.
    let replies_due = Instant::now() + Duration::from_secs(10);
    while missing(&relay, "pool", 3_000) > 0 && Instant::now() < replies_due {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = relay.transactions().len();
    let twice = duplicates(&relay);
    eprintln!(
        "three nodes, pool=6: {delivered} messages ({twice} of them twice) in {:?}; most sessions open at once: \
         sampled {most_open}, the relay's peak {}; {} connections in all",
        started.elapsed(),
        relay.peak_connections(),
        relay.connections()
    );
    assert_eq!(
        missing(&relay, "pool", 3_000),
        0,
        "every message reached the relay"
    );
    assert!(
        relay.peak_connections() <= 6,
        "pool=6 is a cluster total: the relay saw {} sessions at once",
        relay.peak_connections()
    );
    assert!(
        most_open >= 4,
        "the nodes used their shares (two sessions each): at most {most_open} open"
    );
}
