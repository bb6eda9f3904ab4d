//! The application state: what every face of a node (the HTTP API, the dashboard, next the SMTP submission
//! listener) is given by `serve` and shares — the service over the store, the delivery board, and the
//! settings and credentials that decide who may ask. The faces take it from here and never from each other.
//!
//! Also here, because every face needs them the same way: the token rules and their cache, the checks every
//! HTTP request passes before its handler (`guard`), the one JSON error shape (`error`) and the request
//! metrics (`metrics`).

mod error;
mod guard;
mod metrics;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use error::ApiError;
pub use guard::{AllowedHosts, FailureThrottle, client_key, open_mode_guard, too_many_failures};
pub use metrics::{count_requests, prometheus};
use sha2::{Digest, Sha256};

use crate::{delivery::RelayBoard, service::Service, store::StoreError};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    /// SHA-256 of `HERALD_API_TOKEN`, when set.
    pub token_hashes: Arc<Vec<[u8; 32]>>,
    /// What the store said about tokens created with `herald token create`, for a moment.
    stored_tokens: Arc<StoredTokens>,
    /// Each relay's state, kept by the delivery engine, for the dashboard.
    pub relays: RelayBoard,
    /// No relay is configured: delivered mail is in the built-in capture inbox.
    pub capture_inbox: bool,
    /// Turns true when the server stops, so that live streams end and let it.
    pub stopping: Option<tokio::sync::watch::Receiver<bool>>,
    /// The `Host` values accepted in the open mode (empty: not checked, e.g. a router without a listener).
    pub hosts: Arc<AllowedHosts>,
    /// SHA-256 of `HERALD_METRICS_TOKEN`: then `/metrics` needs it as a bearer token.
    pub metrics_token_hash: Option<[u8; 32]>,
    /// Wrong bearer tokens on `/v1`, per client.
    pub(crate) bearer_failures: Arc<FailureThrottle>,
    /// Wrong tokens at the dashboard's sign-in, per client.
    pub(crate) sign_in_failures: Arc<FailureThrottle>,
}

/// Wrong tokens a client may present in [`FAILURE_WINDOW`] (at `/v1` and at sign-in, counted apart) before
/// it is refused with `429` until the oldest is that old: guessing a token is slow whatever its strength, and
/// one client's guessing never locks out another.
pub const MAX_TOKEN_FAILURES: usize = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// SHA-256 of a token, the form in which tokens are kept and compared.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// How long the API trusts what it learnt from the store about tokens. A token revoked with `herald token
/// revoke` stops working within this time on every node, and the first token created on a server that had
/// none closes the API within it; in exchange, an authenticated request costs no store read.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct StoredTokens {
    /// Hashes found in the store, with when.
    valid: Mutex<HashMap<[u8; 32], Instant>>,
    /// Whether the store holds any token, with when that was asked.
    any: Mutex<Option<(bool, Instant)>>,
}

impl AppState {
    pub fn new(service: Service, api_token: Option<&str>) -> Self {
        let token_hashes = api_token
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .into_iter()
            .collect();
        Self {
            service,
            token_hashes: Arc::new(token_hashes),
            stored_tokens: Arc::default(),
            relays: RelayBoard::default(),
            capture_inbox: false,
            stopping: None,
            hosts: Arc::default(),
            metrics_token_hash: None,
            bearer_failures: Arc::new(FailureThrottle::new(MAX_TOKEN_FAILURES, FAILURE_WINDOW)),
            sign_in_failures: Arc::new(FailureThrottle::new(MAX_TOKEN_FAILURES, FAILURE_WINDOW)),
        }
    }

    /// Whether `hash` is the hash of a token in the store (`herald token create`).
    pub(crate) async fn is_stored_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let fresh = |at: &Instant| at.elapsed() < TOKEN_CACHE_TTL;
        if self
            .stored_tokens
            .valid
            .lock()
            .expect("not poisoned")
            .get(hash)
            .is_some_and(fresh)
        {
            return Ok(true);
        }
        // Unknown hashes are not remembered: the map holds real tokens only, so it cannot be grown by guessing.
        let found = self.service.is_stored_token(hash).await?;
        let mut valid = self.stored_tokens.valid.lock().expect("not poisoned");
        valid.retain(|_, at| fresh(at));
        if found {
            valid.insert(*hash, Instant::now());
        }
        Ok(found)
    }

    /// Whether the store holds any token: then the API requires one even without `HERALD_API_TOKEN`.
    pub(crate) async fn any_stored_token(&self) -> Result<bool, StoreError> {
        if let Some((any, at)) = *self.stored_tokens.any.lock().expect("not poisoned")
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(any);
        }
        let any = self.service.has_stored_tokens().await?;
        *self.stored_tokens.any.lock().expect("not poisoned") = Some((any, Instant::now()));
        Ok(any)
    }
}
