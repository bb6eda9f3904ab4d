//! Quick durable-accept throughput probe (the real bench moves to `herald bench accept`).

// A measuring example: a failed unwrap is a failed run (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use herald::{clock::SystemClock, store::*};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        SqliteOptions::new(dir.path().join("h.db")),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let pdf = SharedBlob::new(Bytes::from(vec![b'A'; 68_000]));
    let png = SharedBlob::new(Bytes::from(vec![b'B'; 14_000]));
    let personal = Bytes::from(vec![b'C'; 10_000]);
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(50_000);
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .map(|v| v.parse().unwrap())
        .unwrap_or(32);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let store = store.clone();
        let (pdf, png, personal) = (pdf.clone(), png.clone(), personal.clone());
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(clients) {
                let m = NewMessage {
                    source: Default::default(),
                    id: format!("{i:012}"),
                    sender: "noreply@shop.example".into(),
                    subject: format!("【Example Shop】您的订单 ORD-{} 已发货 📦", 100000000 + i),
                    recipients: vec![NewRecipient {
                        address: format!("customer{i}@example.test"),
                        kind: RecipientKind::To,
                    }],
                    search_text: "您好，您的订单已发货 hello your order has shipped".repeat(10),
                    raw: vec![
                        RawSegment::Literal {
                            bytes: personal.clone(),
                            dot_safe: false,
                        },
                        RawSegment::Shared {
                            blob: png.clone(),
                            dot_safe: true,
                        },
                        RawSegment::Shared {
                            blob: pdf.clone(),
                            dot_safe: true,
                        },
                    ],
                    send_at: None,
                    idempotency_key: None,
                    batch_id: None,
                    tags: vec![],
                    metadata: serde_json::json!({}),
                    ignore_suppressions: false,
                    unsubscribe_list: None,
                };
                store.accept(vec![m]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(dir.path().join("h.db")).unwrap().len()
        + std::fs::metadata(dir.path().join("h.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "{n} accepts from {clients} clients in {secs:.2}s = {:.0}/s; db {} bytes = {} B/msg",
        n as f64 / secs,
        size,
        size / n as u64
    );
}
