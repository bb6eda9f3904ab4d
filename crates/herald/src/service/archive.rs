//! The archive: stored messages read back (one message, its exact bytes, a search, the counts and the
//! activity chart) and acted on (cancel, resend), for the API and the dashboard alike.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use super::{Service, join};
use crate::store::{
    ActivityBucket, CancelOutcome, MessageSource, MessageStatus, MessageView, Millis, NewMessage,
    NewRecipient, SearchPage, SearchQuery, StoreError,
};

impl Service {
    /// Message `id` with its recipients and timeline.
    pub async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        self.store.message(id).await
    }

    /// The exact bytes stored (and sent) for message `id`; `None` when there is no such message or retention
    /// pruned its body.
    pub async fn raw(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.store.raw(id).await?.map(|segments| join(&segments)))
    }

    /// One page of the archive, newest first. Text values are checked by the caller with
    /// [`check_search_text`], which names its own fields.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        self.store.search(query).await
    }

    /// Messages in the store by status.
    pub async fn counts(&self) -> Result<HashMap<MessageStatus, u64>, StoreError> {
        self.store.counts().await
    }

    /// How far full-text search is behind the stored messages (for `/metrics`).
    pub fn search_index_lag(&self) -> crate::store::IndexLag {
        self.store.search_index_lag()
    }

    /// What happened to messages since `since`, in buckets of `bucket_ms`.
    pub async fn activity(
        &self,
        since: Millis,
        bucket_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        self.store.activity(since, bucket_ms).await
    }

    /// Cancels message `id` if it has not started its last attempt (scheduled, queued or deferred).
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        self.store.cancel(id).await
    }

    /// Queues a new message with the same bytes and recipients as message `id` (the dashboard's "resend"),
    /// linked both ways: the new one's metadata has `resent_from`, and each timeline says what happened.
    /// `None` when there is no such message or its body was pruned by retention.
    pub async fn resend(&self, id: &str) -> Result<Option<String>, StoreError> {
        let Some(view) = self.store.message(id).await? else {
            return Ok(None);
        };
        let Some(raw) = self.store.raw(id).await? else {
            return Ok(None);
        };
        let bytes = join(&raw);
        // The archive indexes the text body; the stored bytes are the only copy of it.
        let search_text = mail_parser::MessageParser::default()
            .parse(&bytes[..])
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .unwrap_or_default();
        let recipients = view
            .recipients
            .iter()
            .map(|r| NewRecipient {
                address: r.address.clone(),
                kind: r.kind,
            })
            .collect();
        let mut metadata = view.metadata.clone();
        if let Value::Object(map) = &mut metadata {
            map.insert("resent_from".into(), Value::String(id.to_owned()));
        }
        let tags = view
            .tags
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let message = NewMessage {
            source: MessageSource::Api,
            id: uuid::Uuid::now_v7().to_string(),
            sender: view.from,
            subject: view.subject,
            recipients,
            search_text,
            raw,
            send_at: None,
            idempotency_key: None,
            batch_id: None,
            tags,
            metadata,
            // A copy is checked like any new message; its old link still names the original.
            ignore_suppressions: false,
            unsubscribe_list: None,
        };
        let accepted = self.store.accept(vec![message]).await?;
        let new_id = accepted
            .first()
            .map(|a| a.id().to_owned())
            .ok_or(StoreError::Closed)?;
        self.store
            .append_event(id, "resent", Some(format!("resent as {new_id}")))
            .await?;
        self.store
            .append_event(&new_id, "resent_from", Some(format!("a resend of {id}")))
            .await?;
        Ok(Some(new_id))
    }
}

/// Refuses control characters (NUL included) in a search value: no stored text contains them, and the
/// database would reject them as an error of its own rather than the caller's.
pub fn check_search_text(value: Option<&str>) -> Result<(), String> {
    match value.and_then(|v| v.chars().find(|c| c.is_control())) {
        Some(c) => Err(format!("control character {c:?} not allowed")),
        None => Ok(()),
    }
}
