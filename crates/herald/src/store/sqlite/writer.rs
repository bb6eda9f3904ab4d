//! The writer thread: group commit of every write op waiting in its channel, in one transaction; and the
//! checkpointer beside it, which keeps the WAL bounded.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::{
    Param,
    accept::{CreatedOrder, accept},
    archive::prune,
    indexer::{IndexQueue, PendingDoc, index_batch},
    nodes::recover,
    profile::{Laps, WriterPhase, WriterProfile},
    queue::{Claimed, cancel, claim, record},
    queue::{release, renew},
    raw_db::{DbResult, RawDb, SqliteError},
    reports::apply_report,
    suppressions::suppress,
    syncer::Committed,
    webhooks::{WebhookAnswer, WebhookWrite},
};
use crate::{
    clock::Clock,
    store::{
        Accepted, AttemptOutcome, CancelOutcome, Millis, NewMessage, NewSuppression, ReportApplied,
        ReportUpdate, StoreError, Unreadable,
        rules::{self, EventLine},
    },
};

/// Why a write op failed in the writer. Clone: one failed group commit answers every caller in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    #[error(transparent)]
    Corrupt(#[from] Unreadable),
    /// The WAL could not be synced to the disk (see `syncer`): what was committed may not survive a crash.
    #[error("syncing the database's WAL to the disk failed")]
    Sync(#[source] Arc<std::io::Error>),
}

impl From<WriteError> for StoreError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Sqlite(error) => StoreError::Sqlite(error),
            WriteError::Corrupt(error) => StoreError::Corrupt(error),
            WriteError::Sync(error) => StoreError::Sync(error),
        }
    }
}

pub(super) type WriteResult<T> = Result<T, WriteError>;

/// One request to the writer task.
pub(crate) enum WriteOp {
    /// One statement with owned parameters, for the rare writes (templates, tokens): rows changed.
    Execute {
        sql: &'static str,
        params: Vec<Param>,
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    Accept {
        messages: Vec<NewMessage>,
        /// Each message's full-text terms and stored body, worked out by the caller.
        prepared: Vec<super::accept::Prepared>,
        reply: oneshot::Sender<WriteResult<Vec<Accepted>>>,
    },
    /// An index transaction of its own (see `indexer`), asked for by the indexer thread: messages indexed.
    Index {
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    Claim {
        owner: String,
        lease: Duration,
        limit: u32,
        reply: oneshot::Sender<WriteResult<Vec<Claimed>>>,
    },
    Record {
        owner: String,
        outcomes: Vec<AttemptOutcome>,
        reply: oneshot::Sender<WriteResult<()>>,
    },
    Cancel {
        id: String,
        reply: oneshot::Sender<WriteResult<CancelOutcome>>,
    },
    Release {
        owner: String,
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    Renew {
        owner: String,
        lease: Duration,
        ids: Vec<String>,
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    /// Takes back every `sending` message (the previous owner of the file died).
    Recover {
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    Prune {
        finished_before: Millis,
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    /// Entries for the suppression list (issue 12), with their messages' timeline lines.
    Suppress {
        entries: Vec<NewSuppression>,
        reply: oneshot::Sender<WriteResult<u64>>,
    },
    /// A bounce or complaint applied to its recipient (issue 12).
    Report {
        update: ReportUpdate,
        reply: oneshot::Sender<WriteResult<ReportApplied>>,
    },
    /// Webhook claims, outcomes and deletes (issue 12).
    Webhooks {
        op: WebhookWrite,
        reply: oneshot::Sender<WriteResult<WebhookAnswer>>,
    },
}

/// How long ops that arrive while a group is being applied may keep joining it (see [`Writer::apply`]).
const TOP_UP: Duration = Duration::from_millis(1);

/// WAL frames (pages of 4 KB) past which the checkpointer makes the WAL start over: about 64 MB.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// What a WAL file is cut back to when it starts over (`journal_size_limit`).
pub(super) const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Copies committed WAL pages into the database file, beside the writer. PASSIVE never blocks the writer or
/// readers, but it alone does not bound the WAL: SQLite starts the WAL over only when a write begins while
/// every frame is already copied, which under sustained writes never happens (a million accepts left a
/// 17 GB WAL beside a 1.7 GB database). So past [`WAL_RESTART_FRAMES`] a RESTART checkpoint copies the rest
/// while holding off the next write for that moment (little is left after the PASSIVE one), and the next
/// write starts the WAL over, cut back to [`WAL_SIZE_LIMIT`]. Ends when the writer ends (its sender drops).
pub(super) fn checkpoint_loop(mut db: RawDb, written: std::sync::mpsc::Receiver<()>) {
    while written.recv().is_ok() {
        // Let commits accumulate: one checkpoint per 100 ms at most.
        std::thread::sleep(Duration::from_millis(100));
        while written.try_recv().is_ok() {}
        let result = wal_frames_after_passive_checkpoint(&mut db).and_then(|frames| {
            if frames > WAL_RESTART_FRAMES {
                db.exec("PRAGMA wal_checkpoint(RESTART)")
            } else {
                Ok(())
            }
        });
        if let Err(error) = result {
            tracing::warn!(%error, "WAL checkpoint failed; will retry");
        }
    }
    // Last one, so a clean shutdown leaves a small WAL.
    let _ = db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
}

/// Runs a PASSIVE checkpoint; answers how many frames the WAL holds.
pub(super) fn wal_frames_after_passive_checkpoint(db: &mut RawDb) -> DbResult<i64> {
    let mut stmt = db.stmt("PRAGMA wal_checkpoint(PASSIVE)")?;
    // One row: busy, frames in the WAL, frames copied.
    Ok(if stmt.step()? { stmt.int(1) } else { 0 })
}

/// The thread that owns the write connection.
pub(super) struct Writer {
    pub(super) db: RawDb,
    /// Tells the checkpointer that commits happened (it checkpoints at most every 100 ms).
    pub(super) written: std::sync::mpsc::Sender<()>,
    /// Where committed groups wait for the sync that makes them durable before their callers hear it.
    pub(super) durable: std::sync::mpsc::Sender<Committed>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) max_group: usize,
    pub(super) order: CreatedOrder,
    pub(super) index: IndexBook,
    pub(super) profile: Arc<WriterProfile>,
}

/// The writer's side of the full-text index: the queue it fills after each commit and empties in index
/// transactions, and how far the index goes (`store_facts.fts_indexed_through`).
pub(super) struct IndexBook {
    pub(super) queue: Arc<IndexQueue>,
    pub(super) indexed_through: i64,
    /// Messages stored by the group being applied, queued once it commits.
    pub(super) fresh: Vec<PendingDoc>,
}

impl Writer {
    pub(super) fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
        while let Some(first) = ops.blocking_recv() {
            // Group commit: everything already waiting joins this transaction, up to the bound.
            let group = rules::gather(first, WriteOp::weight, self.max_group, || {
                ops.try_recv().ok()
            });
            let (mut index_asks, group): (Vec<WriteOp>, Vec<WriteOp>) = group
                .into_iter()
                .partition(|op| matches!(op, WriteOp::Index { .. }));
            if !group.is_empty() {
                self.apply(group, &mut ops, &mut index_asks);
            }
            // The index in a transaction of its own, after the group: when the indexer asks, or at once when
            // accepts outrun it (which then wait for it: backpressure, not a growing lag).
            if !index_asks.is_empty() || self.index.queue.over_bound() {
                let mut laps = Laps::start(&self.profile);
                let result = index_batch(
                    &mut self.db,
                    &self.index.queue,
                    &mut self.index.indexed_through,
                );
                laps.lap(WriterPhase::FullText);
                for ask in index_asks {
                    if let WriteOp::Index { reply } = ask {
                        let _ = reply.send(result.clone());
                    }
                }
            }
            let _ = self.written.send(());
        }
        // A clean stop leaves nothing to index at the next start.
        while !self.index.queue.is_empty()
            && index_batch(
                &mut self.db,
                &self.index.queue,
                &mut self.index.indexed_through,
            )
            .is_ok()
        {}
        self.index.queue.close();
    }

    /// Applies `group` in one transaction and commits it. Ops that arrive while it is being applied join it
    /// (for at most [`TOP_UP`]): a commit rewrites every page the transaction touched (index pages, the
    /// counters, the newest pages of each table), so under load fewer, larger commits write fewer WAL pages
    /// per message; idle, a lone op still commits at once. Index asks that arrive meanwhile are kept for after.
    fn apply(
        &mut self,
        mut group: Vec<WriteOp>,
        ops: &mut mpsc::Receiver<WriteOp>,
        index_asks: &mut Vec<WriteOp>,
    ) {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let mut answers = Vec::with_capacity(group.len());
        let mut laps = Laps::start(&self.profile);
        let result = (|| -> WriteResult<()> {
            self.db.exec("BEGIN IMMEDIATE")?;
            let mut weight: usize = group.iter().map(WriteOp::weight).sum();
            let mut applied = 0;
            loop {
                for op in &mut group[applied..] {
                    laps.lap(WriterPhase::Other);
                    answers.push(apply_one(
                        &mut self.db,
                        &mut self.order,
                        &mut self.index,
                        &mut laps,
                        op,
                        now,
                    )?);
                }
                applied = group.len();
                if weight >= self.max_group || started.elapsed() >= TOP_UP {
                    break;
                }
                while weight < self.max_group {
                    match ops.try_recv() {
                        Ok(op @ WriteOp::Index { .. }) => index_asks.push(op),
                        Ok(op) => {
                            weight += op.weight();
                            group.push(op);
                        }
                        Err(_) => break,
                    }
                }
                if applied == group.len() {
                    break;
                }
            }
            laps.lap(WriterPhase::Other);
            self.db.exec("COMMIT")?;
            laps.lap(WriterPhase::Commit);
            Ok(())
        })();
        match result {
            Ok(()) => {
                let accepted: usize = group
                    .iter()
                    .filter(|op| matches!(op, WriteOp::Accept { .. }))
                    .map(WriteOp::weight)
                    .sum();
                if accepted > 0 {
                    // Whether concurrent requests (HTTP, SMTP sessions) really share a commit: messages per
                    // commit is the ratio of the two.
                    metrics::counter!("herald_store_accept_commits_total").increment(1);
                    metrics::counter!("herald_store_accept_commit_messages_total")
                        .increment(accepted as u64);
                }
                // Queued before anyone hears "stored", so a search after the answer waits for them.
                self.index.queue.push(self.index.fresh.drain(..));
                let answers = group.into_iter().zip(answers).collect();
                if let Err(unsynced) = self.durable.send(Committed { answers }) {
                    // The syncer is gone (it only ends after this thread): nobody is told "stored".
                    for (op, _) in unsynced.0.answers {
                        op.answer(Err(WriteError::Sync(Arc::new(std::io::Error::other(
                            "the syncer thread has stopped",
                        )))));
                    }
                }
            }
            Err(error) => {
                // Nothing of the group was committed: every caller hears the error, none is told "stored".
                let _ = self.db.exec("ROLLBACK");
                self.index.fresh.clear();
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    ops = group.len(),
                    "store write failed; group rolled back"
                );
                for op in group {
                    op.answer(Err(error.clone()));
                }
            }
        }
    }
}

/// What one op produced inside the transaction, handed to its caller after the commit.
pub(crate) enum Answer {
    Accepted(Vec<Accepted>),
    Claimed(Vec<Claimed>),
    Unit,
    Cancel(CancelOutcome),
    Count(u64),
    Report(ReportApplied),
    Webhooks(WebhookAnswer),
}

impl WriteOp {
    fn weight(&self) -> usize {
        match self {
            WriteOp::Accept { messages, .. } => messages.len(),
            WriteOp::Record { outcomes, .. } => outcomes.len(),
            WriteOp::Suppress { entries, .. } => entries.len(),
            WriteOp::Webhooks { op, .. } => op.weight(),
            _ => 1,
        }
    }

    pub(super) fn answer(self, result: WriteResult<Answer>) {
        // A caller that went away (request timed out) just doesn't hear the answer; the write stands.
        match (self, result) {
            (WriteOp::Accept { reply, .. }, Ok(Answer::Accepted(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Execute { reply, .. }, Ok(Answer::Count(n))) => drop(reply.send(Ok(n))),
            (WriteOp::Execute { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Claim { reply, .. }, Ok(Answer::Claimed(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Record { reply, .. }, Ok(Answer::Unit)) => drop(reply.send(Ok(()))),
            (WriteOp::Cancel { reply, .. }, Ok(Answer::Cancel(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Report { reply, .. }, Ok(Answer::Report(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Report { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Webhooks { reply, .. }, Ok(Answer::Webhooks(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Webhooks { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (
                WriteOp::Release { reply, .. }
                | WriteOp::Prune { reply, .. }
                | WriteOp::Renew { reply, .. }
                | WriteOp::Suppress { reply, .. }
                | WriteOp::Recover { reply },
                Ok(Answer::Count(n)),
            ) => drop(reply.send(Ok(n))),
            (WriteOp::Accept { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Index { reply }, Ok(Answer::Count(n))) => drop(reply.send(Ok(n))),
            (WriteOp::Index { reply }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Claim { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Record { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Cancel { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (
                WriteOp::Release { reply, .. }
                | WriteOp::Prune { reply, .. }
                | WriteOp::Renew { reply, .. }
                | WriteOp::Suppress { reply, .. }
                | WriteOp::Recover { reply },
                Err(e),
            ) => drop(reply.send(Err(e))),
            (_, Ok(_)) => unreachable!("each op yields its own answer kind"),
        }
    }
}

pub(super) fn apply_one(
    db: &mut RawDb,
    order: &mut CreatedOrder,
    index: &mut IndexBook,
    laps: &mut Laps<'_>,
    op: &mut WriteOp,
    now: Millis,
) -> WriteResult<Answer> {
    Ok(match op {
        WriteOp::Execute { sql, params, .. } => Answer::Count(
            db.stmt(sql)?
                .bind(params.iter().map(Param::value))?
                .execute()?,
        ),
        WriteOp::Accept {
            messages, prepared, ..
        } => Answer::Accepted(accept(db, order, index, laps, messages, prepared, now)?),
        WriteOp::Index { .. } => unreachable!("index asks are applied apart from the group"),
        WriteOp::Claim {
            owner,
            lease,
            limit,
            ..
        } => Answer::Claimed(claim(
            db,
            owner,
            now,
            now + lease.as_millis() as Millis,
            *limit,
        )?),
        WriteOp::Record {
            owner, outcomes, ..
        } => {
            record(db, owner, outcomes, now)?;
            Answer::Unit
        }
        WriteOp::Cancel { id, .. } => Answer::Cancel(cancel(db, id, now)?),
        WriteOp::Release { owner, .. } => Answer::Count(release(db, owner, now)?),
        WriteOp::Prune {
            finished_before, ..
        } => Answer::Count(prune(db, *finished_before)?),
        WriteOp::Renew {
            owner, lease, ids, ..
        } => Answer::Count(renew(db, owner, now + lease.as_millis() as Millis, ids)?),
        WriteOp::Recover { .. } => Answer::Count(recover(db, now)?),
        WriteOp::Suppress { entries, .. } => Answer::Count(suppress(db, entries, now)?),
        WriteOp::Report { update, .. } => Answer::Report(apply_report(db, update, now)?),
        WriteOp::Webhooks { op, .. } => Answer::Webhooks(super::webhooks::apply(db, op, now)?),
    })
}

/// Writes one timeline line (see `rules` for what each change writes).
pub(super) fn event(db: &mut RawDb, id: &str, now: Millis, line: EventLine<'_>) -> DbResult<()> {
    db.stmt(
        "INSERT INTO events (message_id, at, type, recipient, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .bind([
        id.into(),
        now.into(),
        line.kind.into(),
        line.recipient.into(),
        line.detail.into(),
    ])?
    .execute()?;
    Ok(())
}
