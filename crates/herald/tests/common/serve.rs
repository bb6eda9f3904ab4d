//! `herald serve` as a real process, for the tests that kill, crash, attack or cluster it.
//!
//! The process gets nothing from the test's environment but `PATH`: a test adds exactly the settings it is
//! about, so everything else runs on the defaults a user gets.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A loopback address nothing listens on now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `herald serve` on `addr` and `database_url`, with logs at `warn` (or `HERALD_TEST_NODE_LOG`) on stderr.
pub fn serve_command(addr: SocketAddr, database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.arg("serve");
    with_serve_env(&mut command, addr, database_url);
    command
}

/// The environment of [`serve_command`], for a command that starts `herald serve` another way (under `sh`).
pub fn with_serve_env(command: &mut Command, addr: SocketAddr, database_url: &str) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_LISTEN", addr.to_string())
        .env("HERALD_DATABASE_URL", database_url)
        .env(
            "RUST_LOG",
            std::env::var("HERALD_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

/// Starts `command` and returns once `/readyz` at `addr` answers 200 (at most 20 s).
// The child is handed to the caller, whose `Drop` kills and waits for it; clippy cannot see past the return.
#[allow(clippy::zombie_processes)]
pub async fn spawn_ready(mut command: Command, addr: SocketAddr) -> Child {
    let mut child = command.spawn().expect("start herald serve");
    // No pooled connection may outlive the probe: it would hold one of the server's connection permits for a
    // while after this returns (the connection-cap test counts them).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return child;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald serve did not become ready at {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, as a service manager stops Herald, then waits: the process must exit 0.
pub fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "herald serve exits 0 on SIGTERM, got {status}"
    );
}
