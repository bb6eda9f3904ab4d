//! Nodes on PostgreSQL: each node's heartbeat row, and releasing the leases of nodes found dead.

use std::time::Duration;

use sqlx::{Executor, Row};

use super::{CHANNEL, PgStore, insert_events};
use crate::store::{
    HeartbeatReport, Membership, Millis, NodeInfo, StoreError,
    rules::{self, Interruption, given_back_status_sql},
};

impl PgStore {
    /// Writes the node's row with `now` as its heartbeat (inserted on the first beat).
    async fn beat(&self, node: &NodeInfo, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
        )
        .bind(&node.id)
        .bind(&node.host)
        .bind(i64::from(node.pid))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Registers the node: its heartbeat row, renewed by [`PgStore::heartbeat`].
    pub async fn join(&self, node: &NodeInfo) -> Result<Membership, StoreError> {
        let now = self.clock.now();
        self.beat(node, now).await?;
        Ok(Membership {
            _lock: None,
            recovered: 0,
        })
    }

    /// Renews this node's row, then looks for dead nodes: a row older than one lease is a node that stopped
    /// renewing (its leases have run out too, or are about to). Its `sending` messages become due now with an
    /// interrupted attempt (not counted), its row goes, and idle nodes are woken. Answers how many are live.
    pub async fn heartbeat(
        &self,
        node: &NodeInfo,
        lease: Duration,
    ) -> Result<HeartbeatReport, StoreError> {
        let now = self.clock.now();
        // Its own statement, committed before the sweep: two nodes sweeping at once never wait on each other's
        // fresh rows (which could deadlock two nodes that were both late).
        self.beat(node, now).await?;
        let cutoff = now - lease.as_millis() as Millis;
        let mut tx = self.pool.begin().await?;
        let dead_nodes: Vec<String> =
            sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1 AND id <> $2 RETURNING id")
                .bind(cutoff)
                .bind(&node.id)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|row| row.get(0))
                .collect();
        let mut released = 0;
        if !dead_nodes.is_empty() {
            let rows = sqlx::query(concat!(
                "UPDATE messages m SET status = ",
                given_back_status_sql!(),
                ", lease_owner = NULL, next_attempt_at = $1
                 FROM (SELECT id, lease_owner FROM messages WHERE lease_owner = ANY($2) AND status = 'sending'
                       FOR UPDATE) old
                 WHERE m.id = old.id
                 RETURNING m.id, old.lease_owner"
            ))
            .bind(now)
            .bind(&dead_nodes)
            .fetch_all(&mut *tx)
            .await?;
            released = rows.len() as u64;
            let interrupted: Vec<(String, String)> = rows
                .into_iter()
                .map(|row| {
                    let owner: String = row.get(1);
                    (row.get(0), Interruption::NodeSilent.detail(Some(&owner)))
                })
                .collect();
            insert_events(
                &mut tx,
                now,
                interrupted
                    .iter()
                    .map(|(id, detail)| (id.as_str(), rules::interrupted_event(detail))),
            )
            .await?;
            if released > 0 {
                tx.execute(sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL))
                    .await?;
            }
        }
        // The limits' split counts a node only while it beats: one that has missed two heartbeats (every third
        // of a lease) is left out, so the others take its share within two beats of a crash, while its leases
        // are released only once a whole lease has passed (above). A live node's beat is never that late.
        let silent = now - (lease.as_millis() * 2 / 3) as Millis;
        let live: i64 = sqlx::query("SELECT count(*) FROM nodes WHERE heartbeat_at >= $1")
            .bind(silent)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        tx.commit().await?;
        Ok(HeartbeatReport {
            live_nodes: live.clamp(1, i64::from(u32::MAX)) as u32,
            dead_nodes,
            released,
        })
    }

    /// Removes the node's row (graceful shutdown, after its leases were given back).
    pub async fn leave(&self, node: &NodeInfo) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(&node.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
