//! The queue on PostgreSQL: claiming due messages under a lease (`SKIP LOCKED`), recording attempt outcomes
//! in a fixed number of statements, cancelling, giving back and renewing leases, and the next due time.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use bytes::Bytes;
use sqlx::{Executor, Row};

use super::{CHANNEL, PgStore, insert_events, suppressions::suppress_in};
use crate::store::{
    AttemptOutcome, CancelOutcome, ClaimedMessage, ClaimedRecipient, MessageStatus, Millis,
    RecipientResult, RecipientStatus, StoreError, Unreadable, raw,
    rules::{
        self, Interruption, Settled, cancellable_sql, final_recipients_sql, given_back_status_sql,
        open_recipients_sql,
    },
};

/// What recording an outcome does to its message row.
pub(super) struct MessageUpdate<'a> {
    id: &'a str,
    /// 1 when the outcome counts as an attempt.
    counts: i32,
    settled: Settled,
}

impl PgStore {
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: rows another node is claiming right now are passed over, not waited for.
        // A due message still `sending` is one whose node stopped renewing its lease (it died before the
        // others saw its heartbeat age): its attempt is recorded as interrupted, like a released one.
        let rows = sqlx::query(
            "UPDATE messages m SET status = 'sending', lease_owner = $1, next_attempt_at = $2
             FROM (SELECT id, status, lease_owner FROM messages
                   WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $3
                   ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) due
             WHERE m.id = due.id
             RETURNING m.id, m.sender, m.created_at, m.attempts, m.raw, due.status = 'sending', due.lease_owner",
        )
        .bind(owner)
        .bind(now + lease.as_millis() as Millis)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut recipients: HashMap<String, Vec<ClaimedRecipient>> = HashMap::new();
        for row in sqlx::query(concat!(
            "SELECT message_id, position, address FROM recipients
                 WHERE message_id = ANY($1) AND status IN ",
            open_recipients_sql!(),
            " ORDER BY message_id, position"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        {
            recipients
                .entry(row.get(0))
                .or_default()
                .push(ClaimedRecipient {
                    position: row.get::<i32, _>(1) as u32,
                    address: row.get(2),
                });
        }
        let taken_over: Vec<(&str, String)> = rows
            .iter()
            .filter(|row| row.get::<Option<bool>, _>(5) == Some(true))
            .map(|row| {
                let owner: Option<String> = row.get(6);
                (
                    row.get::<&str, _>(0),
                    Interruption::LeaseExpired.detail(owner.as_deref()),
                )
            })
            .collect();
        insert_events(
            &mut tx,
            now,
            taken_over
                .iter()
                .map(|(id, detail)| (*id, rules::interrupted_event(detail)))
                .chain(
                    ids.iter()
                        .map(|id| (id.as_str(), rules::status_event(MessageStatus::Sending))),
                ),
        )
        .await?;
        tx.commit().await?;

        let mut wanted = HashSet::new();
        for row in &rows {
            if let Some(framed) = row.get::<Option<&[u8]>, _>(4) {
                let id: String = row.get(0);
                wanted.extend(
                    raw::shared_hashes(framed)
                        .map_err(|reason| StoreError::CorruptBody { id, reason })?,
                );
            }
        }
        let blobs = self.blobs(wanted).await?;
        rows.into_iter()
            .map(|row| {
                let id: String = row.get(0);
                let framed: Option<Vec<u8>> = row.get(4);
                let framed = framed.ok_or_else(|| StoreError::CorruptBody {
                    id: id.clone(),
                    reason: "raw body was pruned".into(),
                })?;
                let raw = raw::decode(&Bytes::from(framed), &blobs).map_err(|reason| {
                    StoreError::CorruptBody {
                        id: id.clone(),
                        reason,
                    }
                })?;
                Ok(ClaimedMessage {
                    recipients: recipients.remove(&id).unwrap_or_default(),
                    id,
                    sender: row.get(1),
                    created_at: row.get(2),
                    attempts: row.get::<i32, _>(3) as u32,
                    raw,
                })
            })
            .collect()
    }

    /// Records attempt outcomes in one transaction of a fixed number of statements, however many outcomes
    /// there are: the time between the relay's final 250 and this commit is the only window in which a node
    /// dying makes a message go out twice, so it is kept short (a statement per message made it grow with the
    /// batch). Only the lease holder records (see the SQLite store); a node that lost the lease gets a
    /// `stale_outcome` event instead.
    pub async fn record(
        &self,
        owner: &str,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
        // FOR UPDATE, in id order: a heartbeat releasing this node's leases cannot slip in between the check
        // and the update, and two recorders lock in the same order.
        let held: HashSet<String> = sqlx::query(
            "SELECT id FROM messages WHERE id = ANY($1) AND lease_owner = $2 AND status = 'sending'
             ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
        let (owned, stale): (Vec<&AttemptOutcome>, Vec<&AttemptOutcome>) =
            outcomes.iter().partition(|o| held.contains(&o.id));
        let stale_details: Vec<(&str, String)> = stale
            .iter()
            .map(|o| (o.id.as_str(), rules::stale_outcome_detail(owner, &o.detail)))
            .collect();
        insert_events(
            &mut tx,
            now,
            stale_details
                .iter()
                .map(|(id, detail)| (*id, rules::stale_outcome_event(detail))),
        )
        .await?;
        if owned.is_empty() {
            tx.commit().await?;
            return Ok(());
        }

        let results: Vec<(&str, &RecipientResult)> = owned
            .iter()
            .flat_map(|o| o.recipients.iter().map(move |r| (o.id.as_str(), r)))
            .collect();
        sqlx::query(concat!(
            "UPDATE recipients r SET status = u.status, smtp_code = u.code, enhanced_status = u.enhanced,
             reply = u.reply
             FROM UNNEST($1::text[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[])
                  AS u(id, position, status, code, enhanced, reply)
             WHERE r.message_id = u.id AND r.position = u.position
               AND r.status NOT IN ",
            final_recipients_sql!()
        ))
        .bind(results.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.position as i32).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.smtp_code.map(i32::from)).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.enhanced_status.as_deref()).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.reply.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        insert_events(
            &mut tx,
            now,
            results
                .iter()
                .map(|(id, r)| (*id, rules::recipient_event(r))),
        )
        .await?;
        // Mailboxes that do not exist: never mailed again, decided with the outcome (issue 12).
        let bad_mailboxes: Vec<_> = results
            .iter()
            .filter(|(_, r)| rules::is_bad_mailbox(r))
            .map(|(id, r)| rules::hard_bounce(r, id))
            .collect();
        if !bad_mailboxes.is_empty() {
            suppress_in(&mut tx, &bad_mailboxes, now).await?;
        }

        let owned_ids: Vec<&str> = owned.iter().map(|o| o.id.as_str()).collect();
        let mut statuses: HashMap<String, Vec<RecipientStatus>> = HashMap::new();
        for row in
            sqlx::query("SELECT message_id, status FROM recipients WHERE message_id = ANY($1)")
                .bind(&owned_ids)
                .fetch_all(&mut *tx)
                .await?
        {
            let status = Unreadable::parse("recipients", "status", row.get::<&str, _>(1))?;
            statuses.entry(row.get(0)).or_default().push(status);
        }
        let mut gave_up: Vec<&str> = Vec::new();
        let mut updates: Vec<MessageUpdate<'_>> = Vec::with_capacity(owned.len());
        for outcome in &owned {
            let recipients = statuses.get(&outcome.id).map_or(&[][..], Vec::as_slice);
            let settled = rules::settle(recipients, outcome.retry_at, now);
            if settled.gave_up {
                gave_up.push(outcome.id.as_str());
            }
            updates.push(MessageUpdate {
                id: outcome.id.as_str(),
                counts: i32::from(outcome.counts_attempt),
                settled,
            });
        }
        if !gave_up.is_empty() {
            let failed: Vec<(String, String)> = sqlx::query(concat!(
                "UPDATE recipients SET status = 'failed' WHERE message_id = ANY($1) AND status IN ",
                open_recipients_sql!(),
                " RETURNING message_id, address"
            ))
            .bind(&gave_up)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
            insert_events(
                &mut tx,
                now,
                failed
                    .iter()
                    .map(|(id, address)| (id.as_str(), rules::gave_up_event(address))),
            )
            .await?;
        }
        sqlx::query(
            "UPDATE messages m SET status = u.status, attempts = m.attempts + u.counts,
             next_attempt_at = u.next_attempt_at, lease_owner = NULL, finished_at = u.finished_at
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[])
                  AS u(id, status, counts, next_attempt_at, finished_at)
             WHERE m.id = u.id AND m.lease_owner = $6",
        )
        .bind(updates.iter().map(|u| u.id).collect::<Vec<_>>())
        .bind(
            updates
                .iter()
                .map(|u| u.settled.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(updates.iter().map(|u| u.counts).collect::<Vec<_>>())
        .bind(
            updates
                .iter()
                .map(|u| u.settled.next_attempt_at)
                .collect::<Vec<_>>(),
        )
        .bind(
            updates
                .iter()
                .map(|u| u.settled.finished_at)
                .collect::<Vec<_>>(),
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        insert_events(
            &mut tx,
            now,
            owned.iter().zip(&updates).map(|(outcome, update)| {
                (
                    outcome.id.as_str(),
                    rules::attempt_event(update.settled.status, &outcome.detail),
                )
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(concat!(
            "UPDATE messages SET status = 'cancelled', next_attempt_at = NULL, finished_at = $1
             WHERE id = $2 AND status IN ",
            cancellable_sql!()
        ))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let outcome = if done == 1 {
            sqlx::query(concat!(
                "UPDATE recipients SET status = 'cancelled' WHERE message_id = $1 AND status IN ",
                open_recipients_sql!()
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let line = rules::status_event(MessageStatus::Cancelled);
            insert_events(&mut tx, now, [(id, line)]).await?;
            CancelOutcome::Cancelled
        } else {
            match sqlx::query("SELECT status FROM messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                None => CancelOutcome::NotFound,
                Some(row) => CancelOutcome::NotCancellable(Unreadable::parse(
                    "messages",
                    "status",
                    row.get::<&str, _>(0),
                )?),
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(concat!(
            "UPDATE messages SET status = ",
            given_back_status_sql!(),
            ", lease_owner = NULL, next_attempt_at = $1 WHERE lease_owner = $2 AND status = 'sending'"
        ))
        .bind(self.clock.now())
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if released > 0 {
            tx.execute(sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL))
                .await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    /// Extends the leases `owner` still holds on `ids` to `lease` from now, in one statement (see the SQLite
    /// store).
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let until = self.clock.now() + lease.as_millis() as Millis;
        // SKIP LOCKED: a row locked now is being recorded (its outcome commits and ends the lease) or
        // cancelled. Waiting for it instead let this UPDATE and the node's own outcome transaction lock the
        // same rows in different orders: PostgreSQL then aborts one as a deadlock victim, and an aborted
        // outcome meant its messages were sent again once their leases ran out (10 sent twice in a run of
        // the two-node crash test).
        Ok(sqlx::query(
            "UPDATE messages SET next_attempt_at = $1
             WHERE id IN (SELECT id FROM messages WHERE id = ANY($3) AND lease_owner = $2 AND status = 'sending'
                          ORDER BY id FOR UPDATE SKIP LOCKED)",
        )
        .bind(until)
        .bind(owner)
        .bind(ids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query(
            "SELECT MIN(next_attempt_at) FROM messages WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?
        .get(0))
    }
}
