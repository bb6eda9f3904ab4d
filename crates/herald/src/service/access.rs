//! Who may ask: the API tokens made by `herald token create` (kept as hashes) and the dashboard's sessions.
//! The rules (which token opens what, the cache in front of the store) are the application state's; these
//! are the store's answers it builds on.

use std::time::Duration;

use super::Service;
use crate::store::{SessionInfo, StoreError};

impl Service {
    /// Whether `hash` is the hash of a stored token.
    pub async fn is_stored_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.store.token_hash_exists(hash).await
    }

    /// Whether the store holds any token: then the API requires one even without `HERALD_API_TOKEN`.
    pub async fn has_stored_tokens(&self) -> Result<bool, StoreError> {
        Ok(!self.store.tokens().await?.is_empty())
    }

    /// Opens a dashboard session keyed by `session_hash` (the cookie secret's hash), opened with the token
    /// whose hash is `token_hash`, for `ttl` from now on the store's clock.
    pub async fn open_session(
        &self,
        session_hash: &[u8; 32],
        token_hash: &[u8; 32],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let expires_at = self.store.clock().now() + ttl.as_millis() as i64;
        self.store
            .create_session(session_hash, token_hash, expires_at)
            .await
    }

    /// The live session keyed by `session_hash`, if any.
    pub async fn session(
        &self,
        session_hash: &[u8; 32],
    ) -> Result<Option<SessionInfo>, StoreError> {
        self.store.session(session_hash).await
    }

    /// Ends the session keyed by `session_hash`; whether there was one.
    pub async fn close_session(&self, session_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.store.delete_session(session_hash).await
    }
}
