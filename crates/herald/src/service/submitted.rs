//! Messages that arrive as finished bytes (SMTP submission, issue 11, `crate::submission`): stored as they
//! are, through the same group commit as the API's messages.

use super::Service;
use crate::store::{Accepted, NewMessage, StoreError};

impl Service {
    /// Stores `message` durably, in one commit grouped with the concurrent callers' (the API's included);
    /// returns after the commit. An idempotency key seen before answers [`Accepted::Existing`].
    pub async fn accept_submitted(&self, message: NewMessage) -> Result<Accepted, StoreError> {
        let mut accepted = self.store.accept(vec![message]).await?;
        accepted.pop().ok_or(StoreError::Closed)
    }
}
