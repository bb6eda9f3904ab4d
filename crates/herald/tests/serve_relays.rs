//! `herald serve` with several relays, configured the way an operator does it (HERALD_RELAY_URL as the
//! default, HERALD_RELAY_URL_<NAME> + HERALD_RELAY_DOMAINS_<NAME> by sender domain): mail posted through the
//! API leaves through the relay its sender's domain names, everything else through the default, and a relay
//! whose limits are in its URL (pool, rate, domain_concurrency, batch) is accepted.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use herald::{config::Config, serve};
use herald_testkit::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_leaves_through_the_relay_its_sender_domain_names() {
    let dir = tempfile::tempdir().unwrap();
    let default_relay = TestServer::capture().await;
    let shop_relay = TestServer::capture().await;
    let values: HashMap<String, String> = HashMap::from([
        ("HERALD_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "HERALD_DATABASE_URL".into(),
            format!("sqlite://{}", dir.path().join("herald.db").display()),
        ),
        (
            "HERALD_RELAY_URL".into(),
            format!("smtp://127.0.0.1:{}?tls=none&pool=2", default_relay.port()),
        ),
        (
            "HERALD_RELAY_URL_SHOP".into(),
            format!(
                "smtp://127.0.0.1:{}?tls=none&pool=4&rate=1000&domain_concurrency=2&batch=8",
                shop_relay.port()
            ),
        ),
        (
            "HERALD_RELAY_DOMAINS_SHOP".into(),
            "shop.example, *.shop.example".into(),
        ),
    ]);
    let server = serve::start(Config::from_values(&values).unwrap())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let senders = [
        "Shop <orders@shop.example>",
        "alerts@ops.example",
        "news@eu.shop.example",
    ];
    for (i, from) in senders.iter().enumerate() {
        let response = client
            .post(format!("http://{}/v1/messages", server.addr))
            .json(&json!({
                "from": from,
                "to": format!("customer{i}@example.test"),
                "subject": format!("message {i}"),
                "text": "hello",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    let start = Instant::now();
    while shop_relay.transactions().len() + default_relay.transactions().len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "not delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut via_shop: Vec<String> = shop_relay
        .transactions()
        .into_iter()
        .map(|t| t.mail_from)
        .collect();
    via_shop.sort();
    assert_eq!(via_shop, ["news@eu.shop.example", "orders@shop.example"]);
    let via_default: Vec<String> = default_relay
        .transactions()
        .into_iter()
        .map(|t| t.mail_from)
        .collect();
    assert_eq!(via_default, ["alerts@ops.example"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_relay_configuration_mistake_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let values: HashMap<String, String> = HashMap::from([
        ("HERALD_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "HERALD_DATABASE_URL".into(),
            format!("sqlite://{}", dir.path().join("herald.db").display()),
        ),
        (
            "HERALD_RELAY_URL".into(),
            "smtp://127.0.0.1:1?tls=none".into(),
        ),
        (
            "HERALD_RELAY_URL_SHOP".into(),
            "smtp://127.0.0.1:2?tls=none&rate=fast".into(),
        ),
        ("HERALD_RELAY_DOMAINS_SHOP".into(), "shop.example".into()),
    ]);
    let error = serve::start(Config::from_values(&values).unwrap())
        .await
        .err()
        .expect("a bad rate stops the start")
        .to_string();
    assert!(
        error.contains("HERALD_RELAY_URL_SHOP") && error.contains("rate=fast"),
        "{error}"
    );
}
