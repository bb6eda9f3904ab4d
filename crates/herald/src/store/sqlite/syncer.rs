//! The syncer thread: makes the writer's commits durable, many at a time, beside the writer.
//!
//! Why: with `synchronous = FULL` every group commit waited for its own fsync on the writer thread, so the
//! writer sat idle for the fsync and the next group could not start until it returned; 32 clients gave at
//! most 32 messages per fsync, one fsync after another. The writer now commits with `synchronous = NORMAL`
//! (the WAL frames are written, not synced) and hands the group's answers here; this thread syncs the WAL
//! file once for every group that has committed since its last sync, and only then answers their callers.
//! While it syncs, the writer is already applying the next group.
//!
//! Why this is as durable as FULL for every answered caller: a group's frames are in the WAL file before its
//! answers reach this thread, and `fdatasync` on any descriptor of a file writes all of its dirty pages, so
//! once it returns every group handed over before it is on the disk. SQLite's recovery reads WAL frames up to
//! the first incomplete commit, so what survives a power loss is always a prefix of the commits: a later
//! group (a claim, an outcome) is never durable without the earlier ones (the accept it depends on). Every
//! answer goes through here in commit order, claims included, so a message is never handed to delivery
//! before its accept is durable. With NORMAL, SQLite itself still syncs what it must for its own
//! consistency: the WAL before a checkpoint copies it, the database after, and the WAL header when the WAL
//! starts over.
//!
//! A failed sync answers every waiting caller with the error: nobody is told "stored" for data that may not
//! be on the disk. And every later one too: after a failed fsync Linux may have dropped the dirty pages and
//! report the next fsync as a success (PostgreSQL's "fsyncgate"), so the store stays failed until restarted,
//! when SQLite's recovery reads what really is on the disk.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use super::writer::{Answer, WriteError, WriteOp};

/// The answers of one committed group, waiting for the sync that makes it durable.
pub(super) struct Committed {
    pub(super) answers: Vec<(WriteOp, Answer)>,
}

/// Counters of the syncer's work (for `herald bench store`): syncs, groups they covered, and their time.
#[derive(Debug, Default)]
pub struct SyncProfile {
    syncs: AtomicU64,
    groups: AtomicU64,
    nanos: AtomicU64,
}

impl SyncProfile {
    /// (syncs, groups made durable, nanoseconds spent in fdatasync) so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.groups.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed),
        )
    }
}

/// The database's WAL file, opened by this thread to sync it (SQLite keeps its own descriptor private).
struct WalFile {
    path: PathBuf,
    file: Option<File>,
}

impl WalFile {
    fn sync(&mut self) -> io::Result<()> {
        // The WAL keeps its inode while any connection has the database open (SQLite truncates it, never
        // replaces it), but a replaced file would be synced in vain: check, and open the current one.
        let current = std::fs::metadata(&self.path)?;
        let stale = match &self.file {
            Some(file) => {
                let open = file.metadata()?;
                (open.dev(), open.ino()) != (current.dev(), current.ino())
            }
            None => true,
        };
        if stale {
            self.file = Some(File::open(&self.path)?);
        }
        self.file
            .as_ref()
            .expect("opened just above when missing")
            .sync_data()
    }
}

/// The WAL file's path for database `db`.
pub(super) fn wal_path(db: &std::path::Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Runs until the writer drops its sender, then syncs and answers what is left.
pub(super) fn sync_loop(
    wal: PathBuf,
    committed: std::sync::mpsc::Receiver<Committed>,
    profile: Arc<SyncProfile>,
) {
    let mut wal = WalFile {
        path: wal,
        file: None,
    };
    let mut failed: Option<Arc<io::Error>> = None;
    while let Ok(first) = committed.recv() {
        let mut groups = vec![first];
        groups.extend(committed.try_iter());
        let started = Instant::now();
        let result = match &failed {
            Some(error) => Err(error.clone()),
            None => wal.sync().map_err(|error| {
                tracing::error!(%error, wal = %wal.path.display(),
                    "syncing the WAL failed; every write from now on is reported as failed: restart herald");
                let error = Arc::new(error);
                failed = Some(error.clone());
                error
            }),
        };
        profile
            .nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        profile.syncs.fetch_add(1, Ordering::Relaxed);
        profile
            .groups
            .fetch_add(groups.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                for (op, answer) in groups.into_iter().flat_map(|g| g.answers) {
                    op.answer(Ok(answer));
                }
            }
            Err(error) => {
                let error = WriteError::Sync(error);
                for (op, _) in groups.into_iter().flat_map(|g| g.answers) {
                    op.answer(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// A committed group of one op whose caller waits on the returned receiver.
    fn group() -> (Committed, oneshot::Receiver<Result<u64, WriteError>>) {
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Execute {
            sql: "UPDATE t SET x = 1",
            params: Vec::new(),
            reply,
        };
        (
            Committed {
                answers: vec![(op, Answer::Count(1))],
            },
            answer,
        )
    }

    #[test]
    fn callers_hear_stored_after_a_sync_and_never_after_one_failed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let (send, committed) = std::sync::mpsc::channel();
        let profile = Arc::new(SyncProfile::default());
        let syncer = {
            let (wal, profile) = (wal.clone(), profile.clone());
            std::thread::spawn(move || sync_loop(wal, committed, profile))
        };

        let (first, answer) = group();
        send.send(first).unwrap();
        assert_eq!(answer.blocking_recv().unwrap().unwrap(), 1);
        assert_eq!(profile.snapshot().0, 1, "one sync for one group");

        // The WAL is gone: the sync fails, and the caller hears the error, not "stored".
        std::fs::remove_file(&wal).unwrap();
        let (second, answer) = group();
        send.send(second).unwrap();
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(WriteError::Sync(_))
        ));

        // Back again, but a failed fsync may have dropped pages: the store stays failed until restarted.
        std::fs::write(&wal, b"frames").unwrap();
        let (third, answer) = group();
        send.send(third).unwrap();
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(WriteError::Sync(_))
        ));

        drop(send);
        syncer.join().unwrap();
    }
}
