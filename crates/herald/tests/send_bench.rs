//! `herald bench smtp` end to end against the test server (small counts: it checks the command,
//! not the speed).

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use herald_testkit::TestServer;

async fn bench(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["bench", "smtp"])
            .args(&args)
            .output()
            .expect("run herald");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smtp_sends_every_message_over_the_given_connections() {
    let server = TestServer::capture().await;
    let dir = std::env::temp_dir().join(format!("herald-send-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let message = dir.join("m.eml");
    std::fs::write(&message, "Subject: bench\n\n.dot line\nbody\n").unwrap();
    let relay = format!("smtp://127.0.0.1:{}?tls=none", server.port());
    let args = [
        "--relay",
        &relay,
        "--connections",
        "3",
        "--count",
        "50",
        "--batch",
        "4",
        "--message",
        message.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = bench(args.iter().map(|s| s.to_string()).collect()).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("RESULT msg_per_s=") && stdout.contains("sent=50"),
        "{stdout}"
    );
    assert!(stdout.contains("client CPU"), "{stdout}");
    let transactions = server.transactions();
    assert_eq!(transactions.len(), 50);
    assert!(
        transactions
            .iter()
            .all(|t| t.content == b"Subject: bench\r\n\r\n.dot line\r\nbody\r\n")
    );
    assert!(server.peak_connections() <= 3 && server.connections() <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smtp_composes_the_standard_notification_from_the_fixtures() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/fixtures");
    if !fixtures.join("notification.json").is_file() {
        eprintln!(
            "SKIPPED: the bench fixtures are not at {} (they live beside the repository)",
            fixtures.display()
        );
        return;
    }
    let server = TestServer::capture().await;
    let relay = format!("smtp://127.0.0.1:{}?tls=none", server.port());
    let args = [
        "--relay",
        &relay,
        "--count",
        "10",
        "--distinct",
        "4",
        "--fixtures",
        fixtures.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = bench(args.iter().map(|s| s.to_string()).collect()).await;
    assert!(ok, "{stdout}{stderr}");
    let transactions = server.transactions();
    assert_eq!(transactions.len(), 10);
    assert_eq!(transactions[7].recipients, ["customer7@example.test"]);
    let content = String::from_utf8_lossy(&transactions[7].content);
    assert!(
        content.contains("multipart/mixed") && content.contains("customer3@example.test"),
        "message 7 reuses notification 3"
    );
}
