//! A node's heartbeat: every third of a lease it renews its row in the store, releases the leases of nodes
//! seen dead (PostgreSQL) and publishes how many nodes are live, which the cluster-wide limits split by.
//!
//! It runs beside the engine for the node's whole life, including the shutdown grace period: a node finishing
//! its last transactions is alive, and must not be swept as dead while it does.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{NodeInfo, Store};

/// Beats until aborted. `live_nodes` gets the count after every beat that succeeds (unchanged values are not
/// re-sent, so a receiver's `changed()` means the count moved).
pub async fn run_heartbeat(
    store: Store,
    node: NodeInfo,
    lease: Duration,
    live_nodes: watch::Sender<u32>,
) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.heartbeat(&node, lease).await {
            Ok(report) => {
                if !report.dead_nodes.is_empty() {
                    tracing::warn!(
                        dead = ?report.dead_nodes,
                        released = report.released,
                        "nodes stopped renewing their heartbeat; took back the messages they were delivering"
                    );
                }
                metrics::gauge!("herald_live_nodes").set(f64::from(report.live_nodes));
                live_nodes.send_if_modified(|live| {
                    let changed = *live != report.live_nodes;
                    *live = report.live_nodes;
                    changed
                });
            }
            Err(error) => tracing::warn!(
                error = &error as &dyn std::error::Error,
                "heartbeat failed; retrying at the next beat"
            ),
        }
    }
}

/// This machine's name for the nodes table (where a node runs, for people reading it).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
