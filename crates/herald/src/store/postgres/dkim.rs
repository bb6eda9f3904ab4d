//! DKIM keys on PostgreSQL (issue 13): one row per signing domain and selector, shared by every node.

use sqlx::Row as _;

use super::PgStore;
use crate::{
    dkim::{Algorithm, StoredKey},
    store::{Millis, StoreError, Unreadable},
};

impl PgStore {
    /// Stores a new key; `false` when the domain already has a key with that selector.
    pub async fn put_dkim_key(&self, key: &StoredKey) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, public_key, private_key, encrypted, created_at,
             retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&key.domain)
        .bind(&key.selector)
        .bind(key.algorithm.as_str())
        .bind(&key.public_key)
        .bind(&key.private_key)
        .bind(key.encrypted)
        .bind(key.created_at)
        .bind(key.retired_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every key, by domain and then oldest first.
    pub async fn dkim_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, selector, algorithm, public_key, private_key, encrypted, created_at, retired_at
             FROM dkim_keys ORDER BY domain, created_at, selector",
        )
        .fetch_all(&self.pool)
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
                    encrypted: r.get(5),
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
        let done = sqlx::query(
            "UPDATE dkim_keys SET retired_at = $3 WHERE domain = $1 AND selector <> $2 AND retired_at IS NULL",
        )
        .bind(domain)
        .bind(keep)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn delete_dkim_key(&self, domain: &str, selector: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2")
            .bind(domain)
            .bind(selector)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
