//! API tokens and dashboard sessions on PostgreSQL, stored by the SHA-256 of their secrets.

use sqlx::Row;

use super::PgStore;
use crate::store::{Millis, SessionInfo, StoreError, TokenInfo, rows};

impl PgStore {
    pub async fn create_token(&self, name: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(name)
        .bind(&hash[..])
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn token_hash_exists(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM api_tokens WHERE token_hash = $1")
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, created_at FROM api_tokens ORDER BY name")
            .fetch_all(&self.pool)
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
        let done = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores a dashboard session (by the SHA-256 of its secret) and drops expired ones.
    pub async fn create_session(
        &self,
        hash: &[u8; 32],
        token_hash: &[u8; 32],
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at < $1")
            .bind(self.clock.now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (hash, token_hash, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&hash[..])
        .bind(&token_hash[..])
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token hash and expiry of a live session.
    pub async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, expires_at FROM dashboard_sessions WHERE hash = $1 AND expires_at > $2",
        )
        .bind(&hash[..])
        .bind(self.clock.now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| rows::session_info(r.get(0), r.get(1))))
    }

    pub async fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM dashboard_sessions WHERE hash = $1")
            .bind(&hash[..])
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
