//! Accepting messages on PostgreSQL: the task that groups waiting accepts into one transaction, and the
//! multi-row inserts (UNNEST) of one group.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use sqlx::{Executor, PgPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{CHANNEL, PgStore, insert_events, suppressions::suppressed_recipients};
use crate::{
    clock::Clock,
    store::{
        Accepted, MessageStatus, Millis, NewMessage, RecipientStatus, StoreError, Unreadable,
        raw::{self, RawSegment, SharedBlob},
        rules,
        search::index_terms,
    },
};

pub(super) type AcceptRequest = (
    Vec<NewMessage>,
    oneshot::Sender<Result<Vec<Accepted>, GroupError>>,
);

/// Why a group of accepts was not stored. Clone: every caller in the group hears it.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum GroupError {
    #[error("database error")]
    Database(#[source] Arc<sqlx::Error>),
    #[error(transparent)]
    Corrupt(#[from] Unreadable),
}

impl From<sqlx::Error> for GroupError {
    fn from(error: sqlx::Error) -> Self {
        GroupError::Database(Arc::new(error))
    }
}

impl From<GroupError> for StoreError {
    fn from(error: GroupError) -> Self {
        match error {
            GroupError::Database(error) => StoreError::Database(error),
            GroupError::Corrupt(error) => StoreError::Corrupt(error),
        }
    }
}

impl PgStore {
    pub async fn accept(&self, messages: Vec<NewMessage>) -> Result<Vec<Accepted>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.accepts
            .send((messages, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::from)
    }
}

/// Group commit for accepts: every request waiting when a transaction starts joins it.
pub(super) async fn batch_accepts(
    pool: PgPool,
    clock: Arc<dyn Clock>,
    mut requests: mpsc::Receiver<AcceptRequest>,
) {
    while let Some(first) = requests.recv().await {
        let group = rules::gather(
            first,
            |(messages, _)| messages.len(),
            rules::MAX_GROUP,
            || requests.try_recv().ok(),
        );
        let all: Vec<&NewMessage> = group.iter().flat_map(|(messages, _)| messages).collect();
        match accept_group(&pool, clock.now(), &all).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for (messages, reply) in group {
                    let _ = reply.send(Ok(results.by_ref().take(messages.len()).collect()));
                }
            }
            Err(error) => {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "accept transaction failed; nothing of the group was stored"
                );
                for (_, reply) in group {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One array per column, for a multi-row INSERT through UNNEST.
#[derive(Default)]
pub(super) struct MessageColumns<'a> {
    ids: Vec<&'a str>,
    statuses: Vec<&'static str>,
    senders: Vec<&'a str>,
    subjects: Vec<&'a str>,
    send_ats: Vec<Option<Millis>>,
    dues: Vec<Option<Millis>>,
    finished: Vec<Option<Millis>>,
    lists: Vec<Option<&'a str>>,
    keys: Vec<Option<&'a str>>,
    batches: Vec<Option<&'a str>>,
    tags: Vec<String>,
    metadata: Vec<String>,
    raws: Vec<Vec<u8>>,
    sizes: Vec<i64>,
    documents: Vec<String>,
    sources: Vec<&'static str>,
}

pub(super) async fn accept_group(
    pool: &PgPool,
    now: Millis,
    messages: &[&NewMessage],
) -> Result<Vec<Accepted>, GroupError> {
    let mut tx = pool.begin().await?;
    // The suppression check (issue 12), in the accepting transaction, one lookup for the group.
    let suppressed = suppressed_recipients(&mut tx, messages, now).await?;
    let state_of = |i: usize| {
        let all = !messages[i].recipients.is_empty()
            && suppressed[i].len() == messages[i].recipients.len();
        rules::accepted_state(messages[i].send_at, now, all)
    };
    let mut blob_refs: HashMap<[u8; 32], (&SharedBlob, i64)> = HashMap::new();
    for m in messages {
        for segment in &m.raw {
            if let RawSegment::Shared { blob, .. } = segment {
                blob_refs.entry(blob.hash).or_insert((blob, 0)).1 += 1;
            }
        }
    }
    // Messages first: ON CONFLICT on the idempotency key tells which are new, even against another node's
    // concurrent accept of the same key.
    let mut c = MessageColumns::default();
    for (i, m) in messages.iter().enumerate() {
        let state = state_of(i);
        c.ids.push(&m.id);
        c.statuses.push(state.status.as_str());
        c.finished.push(state.finished_at);
        c.lists.push(m.unsubscribe_list.as_deref());
        c.senders.push(&m.sender);
        c.subjects.push(&m.subject);
        c.send_ats.push(m.send_at);
        c.dues.push(state.next_attempt_at);
        c.keys.push(m.idempotency_key.as_deref());
        c.batches.push(m.batch_id.as_deref());
        c.tags
            .push(serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into()));
        c.metadata.push(m.metadata.to_string());
        c.raws.push(raw::encode(&m.raw));
        c.sizes.push(raw::wire_size(&m.raw) as i64);
        c.sources.push(m.source.as_str());
        let addresses: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
        let document = format!(
            "{} {} {} {}",
            m.subject,
            m.sender,
            addresses.join(" "),
            m.search_text
        );
        c.documents.push(index_terms(&document));
    }
    let inserted: HashSet<String> = sqlx::query(
        "INSERT INTO messages (id, status, sender, subject, created_at, send_at, next_attempt_at, idempotency_key,
                               batch_id, tags, metadata, raw, raw_size, search, source, finished_at, unsubscribe_list)
         SELECT id, status, sender, subject, $7, send_at, due, key, batch, tags, metadata, raw, size,
                array_to_tsvector(string_to_array(doc, ' ')), source, finished, list
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $8::text[],
                     $9::text[], $10::text[], $11::text[], $12::bytea[], $13::bigint[], $14::text[], $15::text[],
                     $16::bigint[], $17::text[])
              AS t(id, status, sender, subject, send_at, due, key, batch, tags, metadata, raw, size, doc, source,
                   finished, list)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(&c.ids)
    .bind(&c.statuses)
    .bind(&c.senders)
    .bind(&c.subjects)
    .bind(&c.send_ats)
    .bind(&c.dues)
    .bind(now)
    .bind(&c.keys)
    .bind(&c.batches)
    .bind(&c.tags)
    .bind(&c.metadata)
    .bind(&c.raws)
    .bind(&c.sizes)
    .bind(&c.documents)
    .bind(&c.sources)
    .bind(&c.finished)
    .bind(&c.lists)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();

    let fresh: Vec<(usize, &NewMessage)> = messages
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, m)| inserted.contains(&m.id))
        .collect();
    let repeated_keys: Vec<&str> = messages
        .iter()
        .filter(|m| !inserted.contains(&m.id))
        .filter_map(|m| m.idempotency_key.as_deref())
        .collect();
    let mut existing: HashMap<String, (String, MessageStatus)> = HashMap::new();
    if !repeated_keys.is_empty() {
        for row in sqlx::query(
            "SELECT idempotency_key, id, status FROM messages WHERE idempotency_key = ANY($1)",
        )
        .bind(&repeated_keys)
        .fetch_all(&mut *tx)
        .await?
        {
            let status = Unreadable::parse("messages", "status", row.get::<&str, _>(2))?;
            existing.insert(row.get(0), (row.get(1), status));
        }
    }

    // Shared blobs of the messages actually stored.
    let mut stored_refs: HashMap<[u8; 32], i64> = HashMap::new();
    for (_, m) in &fresh {
        for segment in &m.raw {
            if let RawSegment::Shared { blob, .. } = segment {
                *stored_refs.entry(blob.hash).or_default() += 1;
            }
        }
    }
    for (hash, refs) in &stored_refs {
        let (blob, _) = blob_refs[hash];
        // The use is counted first, which locks the `blob_refs` row until this commit: a concurrent prune
        // either waits for it (and then sees the count above zero and keeps the blob), or deleted the row
        // and its blob before (and then this UPDATE counts nothing, and the blob is stored again). A blob
        // stored already, the attachment every single-message call carries, is not sent again.
        let counted = sqlx::query("UPDATE blob_refs SET refs = refs + $2 WHERE hash = $1")
            .bind(&hash[..])
            .bind(*refs)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if counted == 0 {
            sqlx::query(
                "INSERT INTO blob_refs (hash, refs) VALUES ($1, $2)
                 ON CONFLICT (hash) DO UPDATE SET refs = blob_refs.refs + EXCLUDED.refs",
            )
            .bind(&hash[..])
            .bind(*refs)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO blobs (hash, bytes, created_at) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash[..])
            .bind(&blob.bytes[..])
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }

    let (mut ids, mut positions, mut addresses, mut kinds, mut statuses) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (m_index, m) in &fresh {
        for (i, r) in m.recipients.iter().enumerate() {
            ids.push(m.id.as_str());
            positions.push(i as i32);
            addresses.push(r.address.as_str());
            kinds.push(r.kind.as_str());
            statuses.push(if suppressed[*m_index].contains(&i) {
                RecipientStatus::Suppressed.as_str()
            } else {
                RecipientStatus::Pending.as_str()
            });
        }
    }
    sqlx::query(
        "INSERT INTO recipients (message_id, position, address, kind, status)
         SELECT id, pos, address, kind, status FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::text[])
              AS t(id, pos, address, kind, status)",
    )
    .bind(&ids)
    .bind(&positions)
    .bind(&addresses)
    .bind(&kinds)
    .bind(&statuses)
    .execute(&mut *tx)
    .await?;
    let (mut tagged, mut tags) = (vec![], vec![]);
    for (_, m) in &fresh {
        for tag in m.tags.iter().collect::<HashSet<_>>() {
            tagged.push(m.id.as_str());
            tags.push(tag.as_str());
        }
    }
    if !tags.is_empty() {
        sqlx::query(
            "INSERT INTO message_tags (tag, created_at, message_id)
             SELECT tag, $3, id FROM UNNEST($1::text[], $2::text[]) AS t(id, tag)",
        )
        .bind(&tagged)
        .bind(&tags)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // Collected first: a lazy iterator of borrowed lines across the await is not Send-provable.
    let mut lines = Vec::with_capacity(fresh.len());
    for (i, m) in &fresh {
        lines.push((m.id.as_str(), rules::status_event(state_of(*i).status)));
        for &p in &suppressed[*i] {
            let address = m.recipients[p].address.as_str();
            lines.push((
                m.id.as_str(),
                rules::suppressed_event(address, rules::SUPPRESSED_AT_ACCEPT),
            ));
        }
    }
    insert_events(&mut tx, now, lines).await?;
    if !fresh.is_empty() {
        // Delivered with the commit: idle nodes wake only for work they can see.
        tx.execute(sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL))
            .await?;
    }
    tx.commit().await?;

    Ok(messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if inserted.contains(&m.id) {
                Accepted::New {
                    id: m.id.clone(),
                    status: state_of(i).status,
                    suppressed: suppressed[i]
                        .iter()
                        .map(|&p| m.recipients[p].address.clone())
                        .collect(),
                }
            } else {
                let key = m.idempotency_key.as_deref().unwrap_or_default();
                let (id, status) = existing
                    .get(key)
                    .cloned()
                    .unwrap_or((m.id.clone(), MessageStatus::Queued));
                Accepted::Existing { id, status }
            }
        })
        .collect())
}
