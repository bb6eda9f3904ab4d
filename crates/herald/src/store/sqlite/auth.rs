//! API tokens and dashboard sessions on SQLite, stored by the SHA-256 of their secrets.

use sqlx::Row;

use super::{Param, SqliteStore};
use crate::store::{Millis, SessionInfo, StoreError, TokenInfo, rows};

impl SqliteStore {
    /// Stores a token's hash under a unique name; `false` when the name is taken.
    pub async fn create_token(&self, name: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let params = vec![
            id.as_str().into(),
            name.into(),
            Param::Blob(hash.to_vec()),
            self.clock.now().into(),
        ];
        let created = self
            .execute(
                "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                params,
            )
            .await?;
        Ok(created > 0)
    }

    pub async fn token_hash_exists(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM api_tokens WHERE token_hash = ?")
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await?
            .is_some())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, created_at FROM api_tokens ORDER BY name")
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| TokenInfo {
                name: r.get(0),
                created_at: r.get(1),
            })
            .collect())
    }

    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute("DELETE FROM api_tokens WHERE name = ?1", vec![name.into()])
            .await?
            > 0)
    }

    /// Stores a dashboard session (by the SHA-256 of its secret) and drops expired ones.
    pub async fn create_session(
        &self,
        hash: &[u8; 32],
        token_hash: &[u8; 32],
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM dashboard_sessions WHERE expires_at < ?1",
            vec![self.clock.now().into()],
        )
        .await?;
        self.execute(
            "INSERT INTO dashboard_sessions (hash, token_hash, expires_at) VALUES (?1, ?2, ?3)",
            vec![
                Param::Blob(hash.to_vec()),
                Param::Blob(token_hash.to_vec()),
                expires_at.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The token hash and expiry of a live session.
    pub async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, expires_at FROM dashboard_sessions WHERE hash = ? AND expires_at > ?",
        )
        .bind(&hash[..])
        .bind(self.clock.now())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.and_then(|r| rows::session_info(r.get(0), r.get(1))))
    }

    pub async fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "DELETE FROM dashboard_sessions WHERE hash = ?1",
                vec![Param::Blob(hash.to_vec())],
            )
            .await?
            > 0)
    }
}
