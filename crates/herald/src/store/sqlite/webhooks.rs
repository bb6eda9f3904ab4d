//! Webhooks in SQLite (issue 12): endpoints, and their outbox `webhook_deliveries`, which the `events`
//! trigger fills inside the writer's transaction. Claims and outcomes go through the writer like every other
//! write (one writer, so a claim never races another node's); reads use the reader pool.

use std::time::Duration;

use sqlx::Row as _;

use super::{
    Param, SqliteStore,
    raw_db::RawDb,
    writer::{WriteOp, WriteResult},
};
use crate::store::{
    ClaimedDelivery, DeliveryOutcome, DeliveryView, EventRecord, Millis, StoreError, WebhookChange,
    WebhookRow,
    webhooks::{
        self, CLAIM_RETURNING, DELIVERY_COLUMNS, WEBHOOK_COLUMNS, event_record_sql, events_column,
    },
};

/// The webhook writes that need more than one statement or answer rows.
pub(super) enum WebhookWrite {
    Claim {
        webhook_id: String,
        owner: String,
        lease: Duration,
        limit: u32,
    },
    Record {
        owner: String,
        outcomes: Vec<DeliveryOutcome>,
        disable_after: Duration,
    },
    Delete {
        id: String,
    },
}

pub(super) enum WebhookAnswer {
    Claimed(Vec<ClaimedDelivery>),
    /// Record: the endpoints disabled for failing. Delete: whether there was one (one id).
    Ids(Vec<String>),
}

impl WebhookWrite {
    pub(super) fn weight(&self) -> usize {
        match self {
            WebhookWrite::Record { outcomes, .. } => outcomes.len(),
            _ => 1,
        }
    }
}

pub(super) fn apply(db: &mut RawDb, op: &WebhookWrite, now: Millis) -> WriteResult<WebhookAnswer> {
    Ok(match op {
        WebhookWrite::Claim {
            webhook_id,
            owner,
            lease,
            limit,
        } => {
            let mut stmt = db.stmt(
                "UPDATE webhook_deliveries SET lease_owner = ?1, next_attempt_at = ?2, attempts = attempts + 1
                 WHERE id IN (SELECT id FROM webhook_deliveries
                              WHERE webhook_id = ?3 AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?4
                              ORDER BY next_attempt_at, id LIMIT ?5)
                 RETURNING id, webhook_id, event_id, event_type, attempts, created_at",
            )?;
            stmt.bind([
                owner.into(),
                (now + lease.as_millis() as Millis).into(),
                webhook_id.into(),
                now.into(),
                i64::from(*limit).into(),
            ])?;
            let mut claimed = Vec::new();
            while stmt.step()? {
                claimed.push(ClaimedDelivery {
                    id: stmt.int(0),
                    webhook_id: stmt.text(1),
                    event_id: stmt.int(2),
                    event_type: stmt.text(3),
                    attempts: stmt.int(4) as u32,
                    created_at: stmt.int(5),
                });
            }
            debug_assert_eq!(CLAIM_RETURNING.split(", ").count(), 6);
            claimed.sort_by_key(|c| c.id);
            WebhookAnswer::Claimed(claimed)
        }
        WebhookWrite::Record {
            owner,
            outcomes,
            disable_after,
        } => WebhookAnswer::Ids(record(db, owner, outcomes, *disable_after, now)?),
        WebhookWrite::Delete { id } => {
            let removed = db
                .stmt("DELETE FROM webhooks WHERE id = ?1")?
                .bind([id.into()])?
                .execute()?;
            db.stmt("DELETE FROM webhook_deliveries WHERE webhook_id = ?1")?
                .bind([id.into()])?
                .execute()?;
            WebhookAnswer::Ids(if removed > 0 {
                vec![id.clone()]
            } else {
                vec![]
            })
        }
    })
}

/// Applies outcomes still under `owner`'s lease, then each endpoint's failure record: cleared by a success,
/// started by a failure, and past `disable_after` the endpoint is disabled. Answers the endpoints disabled.
fn record(
    db: &mut RawDb,
    owner: &str,
    outcomes: &[DeliveryOutcome],
    disable_after: Duration,
    now: Millis,
) -> WriteResult<Vec<String>> {
    // Per endpoint: whether any applied outcome succeeded, and the first failure's time.
    let mut endpoints: Vec<(&str, bool, Millis)> = Vec::new();
    for outcome in outcomes {
        let applied = db
            .stmt(
                "UPDATE webhook_deliveries SET status = ?3, next_attempt_at = ?4, lease_owner = NULL,
                 last_attempt_at = ?5, response_status = ?6, latency_ms = ?7, response_excerpt = ?8,
                 error = ?9, delivered_at = COALESCE(?10, delivered_at)
                 WHERE id = ?1 AND lease_owner = ?2",
            )?
            .bind([
                outcome.id.into(),
                owner.into(),
                outcome.status().into(),
                outcome.next_attempt_at().into(),
                outcome.attempted_at.into(),
                outcome.response_status.map(i64::from).into(),
                outcome.latency_ms.into(),
                outcome.response_excerpt.as_deref().into(),
                outcome.error.as_deref().into(),
                outcome.delivered_at().into(),
            ])?
            .execute()?;
        if applied == 0 {
            // The lease ran out and another attempt has it now; its outcome will count.
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
            db.stmt("UPDATE webhooks SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL")?
                .bind([id.into()])?
                .execute()?;
            continue;
        }
        db.stmt("UPDATE webhooks SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1")?
            .bind([id.into(), first_failure.into()])?
            .execute()?;
        let since = {
            let mut q =
                db.stmt("SELECT failing_since FROM webhooks WHERE id = ?1 AND enabled = 1")?;
            q.bind([id.into()])?;
            if q.step()? && !q.is_null(0) {
                Some(q.int(0))
            } else {
                None
            }
        };
        if let Some(since) = since
            && since <= now - disable_after.as_millis() as Millis
        {
            db.stmt("UPDATE webhooks SET enabled = 0, disabled_reason = ?2, updated_at = ?3 WHERE id = ?1")?
                .bind([
                    id.into(),
                    webhooks::disabled_reason(since).as_str().into(),
                    now.into(),
                ])?
                .execute()?;
            disabled.push(id.to_owned());
        }
    }
    Ok(disabled)
}

impl SqliteStore {
    async fn webhook_write(&self, op: WebhookWrite) -> Result<WebhookAnswer, StoreError> {
        self.call(|reply| WriteOp::Webhooks { op, reply }).await
    }

    pub async fn create_webhook(&self, row: &WebhookRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO webhooks (id, url, events, description, enabled, secret, sealed, previous_secret,
             previous_until, created_at, updated_at, failing_since, disabled_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8, ?8, NULL, NULL)",
            vec![
                row.id.as_str().into(),
                row.url.as_str().into(),
                events_column(&row.events).as_str().into(),
                row.description.as_str().into(),
                i64::from(row.enabled).into(),
                Param::Blob(row.secret.clone()),
                i64::from(row.sealed).into(),
                row.created_at.into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(webhooks::webhook).collect())
    }

    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRow>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(webhooks::webhook))
    }

    pub async fn update_webhook(
        &self,
        id: &str,
        change: &WebhookChange,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let enabled = change.enabled.map_or(Param::Null, |e| i64::from(e).into());
        let changed = self
            .execute(
                "UPDATE webhooks SET url = COALESCE(?2, url), events = COALESCE(?3, events),
                 description = COALESCE(?4, description), enabled = COALESCE(?5, enabled),
                 failing_since = CASE WHEN ?5 IS NOT NULL THEN NULL ELSE failing_since END,
                 disabled_reason = CASE WHEN ?5 IS NOT NULL THEN NULL ELSE disabled_reason END,
                 updated_at = ?6 WHERE id = ?1",
                vec![
                    id.into(),
                    change.url.as_deref().into(),
                    change
                        .events
                        .as_deref()
                        .map(events_column)
                        .as_deref()
                        .into(),
                    change.description.as_deref().into(),
                    enabled,
                    now.into(),
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Puts `secret` in place, keeping `previous` (the old key, sealed the same way) valid until `until`.
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        secret: &[u8],
        previous: &[u8],
        sealed: bool,
        until: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE webhooks SET secret = ?2, previous_secret = ?3, sealed = ?4, previous_until = ?5,
                 updated_at = ?6 WHERE id = ?1",
                vec![
                    id.into(),
                    Param::Blob(secret.to_vec()),
                    Param::Blob(previous.to_vec()),
                    i64::from(sealed).into(),
                    until.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        match self
            .webhook_write(WebhookWrite::Delete { id: id.to_owned() })
            .await?
        {
            WebhookAnswer::Ids(ids) => Ok(!ids.is_empty()),
            WebhookAnswer::Claimed(_) => unreachable!("a delete answers ids"),
        }
    }

    pub async fn claim_webhook_deliveries(
        &self,
        webhook_id: &str,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        match self
            .webhook_write(WebhookWrite::Claim {
                webhook_id: webhook_id.to_owned(),
                owner: owner.to_owned(),
                lease,
                limit,
            })
            .await?
        {
            WebhookAnswer::Claimed(claimed) => Ok(claimed),
            WebhookAnswer::Ids(_) => unreachable!("a claim answers deliveries"),
        }
    }

    pub async fn record_webhook_deliveries(
        &self,
        owner: &str,
        outcomes: Vec<DeliveryOutcome>,
        disable_after: Duration,
    ) -> Result<Vec<String>, StoreError> {
        match self
            .webhook_write(WebhookWrite::Record {
                owner: owner.to_owned(),
                outcomes,
                disable_after,
            })
            .await?
        {
            WebhookAnswer::Ids(ids) => Ok(ids),
            WebhookAnswer::Claimed(_) => unreachable!("a record answers ids"),
        }
    }

    pub async fn webhook_event(&self, event_id: i64) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(event_record_sql!("?1"))
            .bind(event_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(webhooks::event_record))
    }

    /// The newest deliveries of an endpoint, newest first.
    pub async fn webhook_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(webhook_id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        let views: Vec<DeliveryView> = rows.iter().map(webhooks::delivery).collect();
        for view in &views {
            webhooks::check_status(&view.status)?;
        }
        Ok(views)
    }

    /// When the endpoint's next delivery is due (or its lease runs out), if any is open.
    pub async fn next_webhook_due(&self, webhook_id: &str) -> Result<Option<Millis>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE webhook_id = ?1 AND next_attempt_at IS NOT NULL",
        )
        .bind(webhook_id)
        .fetch_one(&self.reader)
        .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    /// "Send again": the delivery is due now, unless a node is sending it at this moment.
    pub async fn redeliver_webhook(
        &self,
        webhook_id: &str,
        delivery_id: i64,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?3, lease_owner = NULL
                 WHERE webhook_id = ?1 AND id = ?2 AND (lease_owner IS NULL OR next_attempt_at <= ?3)",
                vec![webhook_id.into(), delivery_id.into(), now.into()],
            )
            .await?;
        Ok(changed > 0)
    }
}
