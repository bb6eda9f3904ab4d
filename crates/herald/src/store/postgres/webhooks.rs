//! Webhooks on PostgreSQL (issue 12): endpoints, and their outbox `webhook_deliveries`, which the `events`
//! trigger fills in the transaction of each state change. Several nodes claim deliveries row by row with
//! `FOR UPDATE SKIP LOCKED` under a lease, so two nodes never send the same event at once, and no cursor over
//! `events` can skip an id that committed late.

use std::time::Duration;

use sqlx::Row as _;

use super::PgStore;
use crate::store::{
    ClaimedDelivery, DeliveryOutcome, DeliveryView, EventRecord, Millis, StoreError, WebhookChange,
    WebhookRow,
    webhooks::{self, event_record_sql, events_column},
};

/// [`webhooks::WEBHOOK_COLUMNS`] with the booleans as bigint, as the shared row reader takes them.
const WEBHOOK_COLUMNS: &str = "id, url, events, description, enabled::int::bigint, secret, sealed::int::bigint, \
     previous_secret, previous_until, created_at, updated_at, failing_since, disabled_reason";

const DELIVERY_COLUMNS: &str = "id, event_id, event_type, status, attempts::bigint, created_at, next_attempt_at, \
     last_attempt_at, response_status::bigint, latency_ms, response_excerpt, error, delivered_at";

impl PgStore {
    pub async fn create_webhook(&self, row: &WebhookRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, description, enabled, secret, sealed, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&row.id)
        .bind(&row.url)
        .bind(events_column(&row.events))
        .bind(&row.description)
        .bind(row.enabled)
        .bind(&row.secret)
        .bind(row.sealed)
        .bind(row.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(webhooks::webhook).collect())
    }

    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRow>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(webhooks::webhook))
    }

    pub async fn update_webhook(
        &self,
        id: &str,
        change: &WebhookChange,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhooks SET url = COALESCE($2, url), events = COALESCE($3, events),
             description = COALESCE($4, description), enabled = COALESCE($5, enabled),
             failing_since = CASE WHEN $5 IS NOT NULL THEN NULL ELSE failing_since END,
             disabled_reason = CASE WHEN $5 IS NOT NULL THEN NULL ELSE disabled_reason END,
             updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(change.url.as_deref())
        .bind(change.events.as_deref().map(events_column))
        .bind(change.description.as_deref())
        .bind(change.enabled)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        secret: &[u8],
        previous: &[u8],
        sealed: bool,
        until: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhooks SET secret = $2, previous_secret = $3, sealed = $4, previous_until = $5,
             updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(secret)
        .bind(previous)
        .bind(sealed)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn claim_webhook_deliveries(
        &self,
        webhook_id: &str,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let now = self.clock.now();
        // SKIP LOCKED: rows another node is claiming at this moment are passed over, not waited for; once
        // claimed, a row's next_attempt_at is its lease expiry, so no other node takes it before then.
        let rows = sqlx::query(
            "UPDATE webhook_deliveries d SET lease_owner = $1, next_attempt_at = $2, attempts = d.attempts + 1
             FROM (SELECT id FROM webhook_deliveries
                   WHERE webhook_id = $3 AND next_attempt_at IS NOT NULL AND next_attempt_at <= $4
                   ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) due
             WHERE d.id = due.id
             RETURNING d.id, d.webhook_id, d.event_id, d.event_type, d.attempts::bigint, d.created_at",
        )
        .bind(owner)
        .bind(now + lease.as_millis() as Millis)
        .bind(webhook_id)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed: Vec<ClaimedDelivery> = rows.iter().map(webhooks::claimed).collect();
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    /// Applies outcomes still under `owner`'s lease and each endpoint's failure record (see the SQLite
    /// store's `record`), in one transaction. Answers the endpoints disabled for failing.
    pub async fn record_webhook_deliveries(
        &self,
        owner: &str,
        outcomes: Vec<DeliveryOutcome>,
        disable_after: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let mut endpoints: Vec<(&str, bool, Millis)> = Vec::new();
        for outcome in &outcomes {
            let done = sqlx::query(
                "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, lease_owner = NULL,
                 last_attempt_at = $5, response_status = $6, latency_ms = $7, response_excerpt = $8,
                 error = $9, delivered_at = COALESCE($10, delivered_at)
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(outcome.id)
            .bind(owner)
            .bind(outcome.status())
            .bind(outcome.next_attempt_at())
            .bind(outcome.attempted_at)
            .bind(outcome.response_status.map(i32::from))
            .bind(outcome.latency_ms)
            .bind(outcome.response_excerpt.as_deref())
            .bind(outcome.error.as_deref())
            .bind(outcome.delivered_at())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            let ok = outcome.error.is_none();
            match endpoints
                .iter_mut()
                .find(|(id, ..)| *id == outcome.webhook_id)
            {
                Some(entry) => {
                    entry.1 |= ok;
                    entry.2 = entry.2.min(outcome.attempted_at);
                }
                None => endpoints.push((&outcome.webhook_id, ok, outcome.attempted_at)),
            }
        }
        let mut disabled = Vec::new();
        for (id, any_ok, first_failure) in endpoints {
            if any_ok {
                sqlx::query(
                    "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                continue;
            }
            let since: Option<i64> = sqlx::query(
                "UPDATE webhooks SET failing_since = COALESCE(failing_since, $2) WHERE id = $1 AND enabled
                 RETURNING failing_since",
            )
            .bind(id)
            .bind(first_failure)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.get(0));
            if let Some(since) = since
                && since <= now - disable_after.as_millis() as Millis
            {
                sqlx::query(
                    "UPDATE webhooks SET enabled = FALSE, disabled_reason = $2, updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(webhooks::disabled_reason(since))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                disabled.push(id.to_owned());
            }
        }
        tx.commit().await?;
        Ok(disabled)
    }

    pub async fn webhook_event(&self, event_id: i64) -> Result<Option<EventRecord>, StoreError> {
        let sql = event_record_sql!("$1").replace("r.smtp_code", "r.smtp_code::bigint");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(webhooks::event_record))
    }

    pub async fn webhook_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(webhook_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let views: Vec<DeliveryView> = rows.iter().map(webhooks::delivery).collect();
        for view in &views {
            webhooks::check_status(&view.status)?;
        }
        Ok(views)
    }

    pub async fn next_webhook_due(&self, webhook_id: &str) -> Result<Option<Millis>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE webhook_id = $1 AND next_attempt_at IS NOT NULL",
        )
        .bind(webhook_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    pub async fn redeliver_webhook(
        &self,
        webhook_id: &str,
        delivery_id: i64,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, lease_owner = NULL
             WHERE webhook_id = $1 AND id = $2 AND (lease_owner IS NULL OR next_attempt_at <= $3)",
        )
        .bind(webhook_id)
        .bind(delivery_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
