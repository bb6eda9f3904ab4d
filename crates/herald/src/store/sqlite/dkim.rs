//! DKIM keys in SQLite (issue 13): one row per signing domain and selector. Writes go through the writer
//! task like every other write; reads use the reader pool.

use sqlx::Row as _;

use super::{Param, SqliteStore};
use crate::{
    dkim::{Algorithm, StoredKey},
    store::{Millis, StoreError, Unreadable},
};

impl SqliteStore {
    /// Stores a new key; `false` when the domain already has a key with that selector.
    pub async fn put_dkim_key(&self, key: &StoredKey) -> Result<bool, StoreError> {
        let params = vec![
            key.domain.as_str().into(),
            key.selector.as_str().into(),
            key.algorithm.as_str().into(),
            key.public_key.as_str().into(),
            Param::Blob(key.private_key.clone()),
            i64::from(key.encrypted).into(),
            key.created_at.into(),
            key.retired_at.map_or(Param::Null, Param::Int),
        ];
        let created = self
            .execute(
                "INSERT INTO dkim_keys (domain, selector, algorithm, public_key, private_key, encrypted, \
                 created_at, retired_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                params,
            )
            .await?;
        Ok(created > 0)
    }

    /// Every key, by domain and then oldest first.
    pub async fn dkim_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, selector, algorithm, public_key, private_key, encrypted, created_at, retired_at
             FROM dkim_keys ORDER BY domain, created_at, selector",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                let algorithm: String = r.get(2);
                Ok(StoredKey {
                    algorithm: Unreadable::parse::<Algorithm>("dkim_keys", "algorithm", &algorithm)
                        .map_err(StoreError::Corrupt)?,
                    domain: r.get(0),
                    selector: r.get(1),
                    public_key: r.get(3),
                    private_key: r.get(4),
                    encrypted: r.get::<i64, _>(5) != 0,
                    created_at: r.get(6),
                    retired_at: r.get(7),
                })
            })
            .collect()
    }

    /// Marks every key of `domain` but `keep` retired at `at`: they no longer sign. Returns how many.
    pub async fn retire_dkim_keys(
        &self,
        domain: &str,
        keep: &str,
        at: Millis,
    ) -> Result<u64, StoreError> {
        self.execute(
            "UPDATE dkim_keys SET retired_at = ?3 WHERE domain = ?1 AND selector <> ?2 AND retired_at IS NULL",
            vec![domain.into(), keep.into(), at.into()],
        )
        .await
    }

    pub async fn delete_dkim_key(&self, domain: &str, selector: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "DELETE FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                vec![domain.into(), selector.into()],
            )
            .await?
            > 0)
    }
}
