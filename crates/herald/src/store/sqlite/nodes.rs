//! This process's place on SQLite: the lock file that makes it the one serving the database, and taking back
//! what a previous process left `sending`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    SqliteStore,
    raw_db::{RawDb, Value},
    writer::{WriteOp, WriteResult, event},
};
use crate::store::{
    HeartbeatReport, Membership, Millis, NodeInfo, StoreError,
    rules::{self, Interruption, given_back_status_sql},
};

impl SqliteStore {
    /// Makes this process the one serving the file: takes the exclusive lock on `<database>.lock` (refusing if
    /// another process holds it), then takes back every message left `sending`. Holding the lock proves their
    /// owner is gone, so there is no reason to wait for their leases to run out.
    pub async fn join(&self, node: &NodeInfo) -> Result<Membership, StoreError> {
        let lock = lock_database(&self.path, node)?;
        let recovered = self.call(|reply| WriteOp::Recover { reply }).await?;
        Ok(Membership {
            _lock: Some(lock),
            recovered,
        })
    }

    /// One process serves a SQLite file: it is the only live node, and no other node's leases need
    /// releasing.
    pub async fn heartbeat(
        &self,
        _node: &NodeInfo,
        _lease: Duration,
    ) -> Result<HeartbeatReport, StoreError> {
        Ok(HeartbeatReport {
            live_nodes: 1,
            ..HeartbeatReport::default()
        })
    }

    /// Nothing to do: the lock goes with the [`Membership`].
    pub async fn leave(&self, _node: &NodeInfo) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Takes the exclusive lock beside the database and writes who holds it (for the next one's error message).
pub(super) fn lock_database(path: &Path, node: &NodeInfo) -> Result<std::fs::File, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock_error = |source| StoreError::LockFile {
        path: lock_path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StoreError::Locked {
                path: path.display().to_string(),
                holder: if holder.is_empty() {
                    "unknown process".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(lock_error(error)),
    }
    let holder = format!("pid {} on {}, node {}", node.pid, node.host, node.id);
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(holder.as_bytes()))
        .map_err(lock_error)?;
    Ok(file)
}

/// Every `sending` message becomes due now, with an interrupted attempt on its timeline that does not count
/// (attempts unchanged). Only called by the process holding the database's lock, so their owners are dead.
pub(super) fn recover(db: &mut RawDb, now: Millis) -> WriteResult<u64> {
    let mut interrupted = Vec::new();
    {
        let mut q = db.stmt(
            "SELECT id, lease_owner FROM messages WHERE lease_owner IS NOT NULL AND status = 'sending'",
        )?;
        while q.step()? {
            interrupted.push((q.text(0), q.text(1)));
        }
    }
    for (id, owner) in &interrupted {
        db.stmt(concat!(
            "UPDATE messages SET status = ",
            given_back_status_sql!(),
            ", lease_owner = NULL, next_attempt_at = ?1 WHERE id = ?2"
        ))?
        .bind([now.into(), Value::Text(id)])?
        .execute()?;
        let detail = Interruption::ProcessStopped.detail(Some(owner));
        event(db, id, now, rules::interrupted_event(&detail))?;
    }
    // Webhook deliveries the dead process was sending (issue 12): due again now rather than when their
    // lease would have run out. Their attempt was counted at the claim.
    db.stmt(
        "UPDATE webhook_deliveries SET lease_owner = NULL, next_attempt_at = ?1
         WHERE lease_owner IS NOT NULL AND next_attempt_at IS NOT NULL",
    )?
    .bind([now.into()])?
    .execute()?;
    Ok(interrupted.len() as u64)
}
