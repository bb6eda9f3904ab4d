//! The archive: stored messages read back and acted on (resend).

use serde_json::Value;

use super::{Service, join};
use crate::store::{NewMessage, NewRecipient, RecipientKind, StoreError};

impl Service {
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
                kind: r.kind.parse().unwrap_or(RecipientKind::To),
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
