//! DKIM keys (issue 13), as the API and the dashboard ask for them: listed with their states, generated,
//! rotated and removed. A change made here is signed with on this node from the next message on.

use super::Service;
use crate::{
    dkim::{
        Algorithm, StoredKey,
        manage::{self, ManageError},
    },
    store::StoreError,
};

impl Service {
    /// Every key (public and sealed halves; callers show the public one), by domain, oldest first.
    pub async fn dkim_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.store.dkim_keys().await
    }

    /// Makes a key for `domain` (see [`manage::generate_key`]); with `rotate` it takes over from the others.
    pub async fn generate_dkim_key(
        &self,
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        rotate: bool,
    ) -> Result<StoredKey, ManageError> {
        let key = manage::generate_key(
            &self.store,
            self.dkim.secret(),
            domain,
            selector,
            algorithm,
            rotate,
        )
        .await?;
        self.dkim.invalidate();
        Ok(key)
    }

    /// Deletes a key; whether there was one.
    pub async fn remove_dkim_key(&self, domain: &str, selector: &str) -> Result<bool, ManageError> {
        let removed = manage::remove_key(&self.store, domain, selector).await?;
        self.dkim.invalidate();
        Ok(removed)
    }
}
