//! The full-text index on SQLite, kept off the accept commit.
//!
//! Why: indexing a message in the group commit that stores it put FTS5's work (a segment written per commit,
//! merges, and Herald's own term splitting before it) on the one writer thread every `202` waits for; a
//! profile of small alerts showed it as the largest share of the writer's time. Nothing a `202` promises needs
//! the index, so a message is stored first and indexed a moment later:
//!
//! - the caller computes the terms (on its own thread, before the writer sees the message);
//! - the writer stores the message, and after the commit queues its terms here, in memory;
//! - the indexer thread asks the writer for an index transaction once the oldest queued message has waited
//!   [`INDEX_DELAY`] (or [`INDEX_BATCH`] are waiting, or a search is waiting); the writer then indexes up to
//!   [`INDEX_BATCH`] messages in one transaction of their own, and records in the same transaction how far
//!   the index goes (`store_facts.fts_indexed_through`, a rowid: every message at or below it is indexed).
//!   Indexing thousands of messages in one transaction costs FTS5 far less per message than a few dozen per
//!   group commit;
//! - when more than [`QUEUE_BYTES_MAX`] of terms are waiting (accepts outrun the indexer), the writer indexes
//!   before its next group: accepts slow down instead of the queue (and the lag) growing without bound;
//! - a process that dies with messages queued loses only the queue: at the next start every message above
//!   `fts_indexed_through` is read back (subject, addresses, text body from the stored bytes) and indexed, so
//!   no message stays unsearchable;
//! - a search for words waits (at most [`SEARCH_WAIT`]) until everything committed before it began is
//!   indexed, hurrying the indexer: a client that got its `202` finds its message at once.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use sqlx::{Row as _, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    raw_db::{RawDb, Value},
    writer::{WriteOp, WriteResult},
};
use crate::store::{NewMessage, StoreError, raw, search::index_terms};

/// How long a stored message waits at most for others to be indexed with (the index lag under light load).
pub(super) const INDEX_DELAY: Duration = Duration::from_millis(100);

/// Most messages indexed in one transaction: a bound on how long it holds off the next group commit.
pub(super) const INDEX_BATCH: usize = 4_000;

/// Terms waiting beyond which the writer indexes before it takes more writes (about 8,000 small alerts).
pub(super) const QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Longest a search waits for the messages committed before it to be indexed; past it, it reads the index
/// as it is (an index that cannot keep up must not stop searches).
pub(super) const SEARCH_WAIT: Duration = Duration::from_secs(1);

/// One message's terms for the three indexed columns (Herald's own terms, see `store::search`).
#[derive(Debug, Default)]
pub(super) struct IndexTerms {
    pub(super) subject: String,
    pub(super) addresses: String,
    pub(super) body: String,
}

impl IndexTerms {
    /// The terms of a message being accepted: its subject, sender and recipients, and its search text.
    pub(super) fn of(message: &NewMessage) -> Self {
        Self::from_parts(
            &message.subject,
            &message.sender,
            message.recipients.iter().map(|r| r.address.as_str()),
            &message.search_text,
        )
    }

    pub(super) fn from_parts<'a>(
        subject: &str,
        sender: &str,
        recipients: impl Iterator<Item = &'a str>,
        body: &str,
    ) -> Self {
        let mut addresses = sender.to_owned();
        for recipient in recipients {
            addresses.push(' ');
            addresses.push_str(recipient);
        }
        Self {
            subject: index_terms(subject),
            addresses: index_terms(&addresses),
            body: index_terms(body),
        }
    }

    fn bytes(&self) -> usize {
        self.subject.len() + self.addresses.len() + self.body.len()
    }
}

/// A stored message whose terms are not in the index yet.
#[derive(Debug)]
pub(super) struct PendingDoc {
    pub(super) rowid: i64,
    /// Checked against the row at indexing time, so terms never land on another message's rowid.
    pub(super) id: String,
    pub(super) terms: IndexTerms,
    pub(super) committed: Instant,
}

/// How far behind the index is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IndexLag {
    /// Messages committed and not yet searchable.
    pub pending: u64,
    /// How long the oldest of them has waited.
    pub oldest: Duration,
}

#[derive(Debug, Default)]
struct QueueState {
    docs: VecDeque<PendingDoc>,
    bytes: usize,
    /// Messages ever queued (in this process); a search waits for `indexed` to reach the value it saw.
    queued: u64,
    /// A search is waiting: index now, without waiting for [`INDEX_DELAY`].
    hurry: bool,
    /// The writer has stopped: the indexer thread ends.
    closed: bool,
}

/// The queue between the writer (which fills it after each commit and empties it in index transactions),
/// the indexer thread (which decides when) and searches (which wait on it).
#[derive(Debug)]
pub(super) struct IndexQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// Messages indexed so far (in this process), counted in the same order as `queued`.
    indexed: watch::Sender<u64>,
}

impl Default for IndexQueue {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            wake: Condvar::new(),
            indexed: watch::Sender::new(0),
        }
    }
}

impl IndexQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves plain counters behind, still consistent enough to go on.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues committed messages, in commit (rowid) order.
    pub(super) fn push(&self, docs: impl IntoIterator<Item = PendingDoc>) {
        let mut state = self.lock();
        let before = state.docs.len();
        for doc in docs {
            state.bytes += doc.terms.bytes();
            state.docs.push_back(doc);
        }
        let added = state.docs.len() - before;
        if added > 0 {
            state.queued += added as u64;
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Takes the oldest `max` messages for an index transaction.
    pub(super) fn take(&self, max: usize) -> Vec<PendingDoc> {
        let mut state = self.lock();
        let n = state.docs.len().min(max);
        let docs: Vec<PendingDoc> = state.docs.drain(..n).collect();
        state.bytes -= docs.iter().map(|d| d.terms.bytes()).sum::<usize>();
        docs
    }

    /// Gives back messages whose index transaction failed, at the front, to be tried again.
    pub(super) fn put_back(&self, docs: Vec<PendingDoc>) {
        let mut state = self.lock();
        for doc in docs.into_iter().rev() {
            state.bytes += doc.terms.bytes();
            state.docs.push_front(doc);
        }
    }

    /// Counts messages as indexed (committed, or skipped because their row went away).
    pub(super) fn indexed(&self, n: usize) {
        self.indexed.send_modify(|count| *count += n as u64);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().docs.is_empty()
    }

    /// Whether the writer should index before taking more writes.
    pub(super) fn over_bound(&self) -> bool {
        self.lock().bytes > QUEUE_BYTES_MAX
    }

    pub(super) fn lag(&self) -> IndexLag {
        let state = self.lock();
        let pending = state.queued.saturating_sub(*self.indexed.borrow());
        IndexLag {
            pending,
            oldest: state
                .docs
                .front()
                .map_or(Duration::ZERO, |d| d.committed.elapsed()),
        }
    }

    /// Ends the indexer thread (the writer stopped).
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Returns once every message committed before the call is indexed, or after [`SEARCH_WAIT`].
    pub(super) async fn caught_up(&self) {
        let target = {
            let mut state = self.lock();
            if *self.indexed.borrow() >= state.queued {
                return;
            }
            state.hurry = true;
            state.queued
        };
        self.wake.notify_one();
        let mut indexed = self.indexed.subscribe();
        let waited = tokio::time::timeout(SEARCH_WAIT, indexed.wait_for(|n| *n >= target)).await;
        if waited.is_err() {
            tracing::warn!(
                waited_ms = SEARCH_WAIT.as_millis() as u64,
                "search did not wait longer for the full-text index to catch up; recent messages may be missing"
            );
        }
    }

    /// Blocks until an index transaction is due; `false` once the writer has stopped.
    fn wait_until_due(&self) -> bool {
        let mut state = self.lock();
        loop {
            if state.closed {
                return false;
            }
            let wait = match state.docs.front() {
                None => None,
                Some(_) if state.hurry || state.docs.len() >= INDEX_BATCH => {
                    state.hurry = false;
                    return true;
                }
                Some(oldest) => match INDEX_DELAY.checked_sub(oldest.committed.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return true,
                },
            };
            state = match wait {
                None => self
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(left) => {
                    self.wake
                        .wait_timeout(state, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// The indexer thread: asks the writer for an index transaction whenever one is due, one at a time. Holds
/// only a weak sender, so that the writer still stops when the store is dropped.
pub(super) fn index_loop(queue: std::sync::Arc<IndexQueue>, writer: mpsc::WeakSender<WriteOp>) {
    while queue.wait_until_due() {
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let (reply, answer) = oneshot::channel::<WriteResult<u64>>();
        if writer.blocking_send(WriteOp::Index { reply }).is_err() {
            return;
        }
        drop(writer);
        match answer.blocking_recv() {
            Ok(Ok(_)) => {}
            // The writer logged it and kept the messages queued: try again a little later, not at once.
            Ok(Err(_)) => std::thread::sleep(INDEX_DELAY),
            Err(_) => return,
        }
    }
}

/// One index transaction on the writer's connection: up to [`INDEX_BATCH`] queued messages and the new
/// `fts_indexed_through`, committed as every writer commit is (`synchronous = NORMAL`), but answered without
/// waiting for the syncer: the index is rebuilt from the messages if this commit is lost, and the next sync
/// covers it anyway (WAL frames reach the disk in order). Answers how many messages it indexed.
pub(super) fn index_batch(
    db: &mut RawDb,
    queue: &IndexQueue,
    indexed_through: &mut i64,
) -> WriteResult<u64> {
    let docs = queue.take(INDEX_BATCH);
    let Some(last) = docs.last().map(|d| d.rowid) else {
        return Ok(0);
    };
    let result = (|| -> WriteResult<u64> {
        db.exec("BEGIN IMMEDIATE")?;
        let mut indexed = 0;
        for doc in &docs {
            let mut row = db.stmt("SELECT id FROM messages WHERE rowid = ?1")?;
            row.bind([doc.rowid.into()])?;
            let same = row.step()? && row.str(0) == doc.id;
            drop(row);
            if !same {
                continue;
            }
            db.stmt(
                "INSERT INTO messages_fts (rowid, subject, addresses, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .bind([
                doc.rowid.into(),
                Value::Text(&doc.terms.subject),
                Value::Text(&doc.terms.addresses),
                Value::Text(&doc.terms.body),
            ])?
            .execute()?;
            indexed += 1;
        }
        mark_indexed_through(db, last)?;
        db.exec("COMMIT")?;
        Ok(indexed)
    })();
    match result {
        Ok(indexed) => {
            *indexed_through = last;
            queue.indexed(docs.len());
            Ok(indexed)
        }
        Err(error) => {
            let _ = db.exec("ROLLBACK");
            tracing::error!(
                error = &error as &dyn std::error::Error,
                messages = docs.len(),
                "full-text index transaction failed; the messages stay queued"
            );
            queue.put_back(docs);
            Err(error)
        }
    }
}

/// Records that every message at or below `rowid` is indexed (or needs no indexing).
pub(super) fn mark_indexed_through(db: &mut RawDb, rowid: i64) -> WriteResult<()> {
    db.stmt("UPDATE store_facts SET value = ?1 WHERE name = 'fts_indexed_through'")?
        .bind([rowid.into()])?
        .execute()?;
    Ok(())
}

/// How far the index goes (`fts_indexed_through`) and the messages above it, read back for indexing: those
/// a process committed and did not live to index. Their text is the stored message's text body (what the
/// API indexed, or near it: the text part, else text made from the HTML); a body pruned already leaves the
/// subject and addresses.
pub(super) async fn unindexed(
    conn: &mut SqliteConnection,
) -> Result<(i64, Vec<PendingDoc>), StoreError> {
    let through: i64 =
        sqlx::query_scalar("SELECT value FROM store_facts WHERE name = 'fts_indexed_through'")
            .fetch_one(&mut *conn)
            .await?;
    let rows = sqlx::query(
        "SELECT m.rowid, m.id, m.subject, m.sender, b.raw FROM messages m
         LEFT JOIN message_bodies b ON b.message_rowid = m.rowid WHERE m.rowid > ?1 ORDER BY m.rowid",
    )
    .bind(through)
    .fetch_all(&mut *conn)
    .await?;
    let mut docs = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(1);
        let recipients: Vec<String> = sqlx::query_scalar(
            "SELECT address FROM recipients WHERE message_id = ?1 ORDER BY position",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
        let body = row
            .get::<Option<Vec<u8>>, _>(4)
            .and_then(|framed| raw::literal_bytes(&framed).ok())
            .and_then(|bytes| {
                mail_parser::MessageParser::default()
                    .parse(&bytes[..])
                    .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            })
            .unwrap_or_default();
        let subject: String = row.get(2);
        let sender: String = row.get(3);
        docs.push(PendingDoc {
            rowid: row.get(0),
            terms: IndexTerms::from_parts(
                &subject,
                &sender,
                recipients.iter().map(String::as_str),
                &body,
            ),
            id,
            committed: Instant::now(),
        });
    }
    Ok((through, docs))
}
