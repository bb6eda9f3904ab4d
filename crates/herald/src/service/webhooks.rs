//! Webhook endpoints (issue 12), as the API and the dashboard ask for them: created (the secret shown once),
//! listed, changed, rotated, deleted, and their recent deliveries, one of which can be sent again. A change
//! reaches this node's dispatcher at once and the other nodes' within a second.

use super::Service;
use crate::{
    events::{
        WebhookError,
        manage::{self, EndpointFields},
    },
    store::{DeliveryView, StoreError, WebhookRow},
};

impl Service {
    /// The store's clock, for answers that show how long is left (a rotation's overlap).
    pub fn now(&self) -> crate::store::Millis {
        self.store.clock().now()
    }

    /// Creates an endpoint; answers it and its `whsec_…` secret.
    pub async fn create_webhook(
        &self,
        fields: EndpointFields,
    ) -> Result<(WebhookRow, String), WebhookError> {
        let now = self.store.clock().now();
        let created = manage::create(&self.store, &self.webhooks, fields, now).await?;
        self.webhooks_changed.notify();
        Ok(created)
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        self.store.webhooks().await
    }

    pub async fn webhook(&self, id: &str) -> Result<WebhookRow, WebhookError> {
        self.store
            .webhook(id)
            .await?
            .ok_or_else(|| WebhookError::NotFound(id.to_owned()))
    }

    pub async fn update_webhook(
        &self,
        id: &str,
        fields: EndpointFields,
    ) -> Result<WebhookRow, WebhookError> {
        let now = self.store.clock().now();
        let row = manage::update(&self.store, &self.webhooks, id, fields, now).await?;
        self.webhooks_changed.notify();
        Ok(row)
    }

    /// A new secret; the old one keeps signing beside it for 24 hours.
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
    ) -> Result<(WebhookRow, String), WebhookError> {
        let now = self.store.clock().now();
        let rotated = manage::rotate(&self.store, &self.webhooks, id, now).await?;
        self.webhooks_changed.notify();
        Ok(rotated)
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), WebhookError> {
        if !self.store.delete_webhook(id).await? {
            return Err(WebhookError::NotFound(id.to_owned()));
        }
        self.webhooks_changed.notify();
        Ok(())
    }

    /// The newest deliveries of an endpoint (at most `limit`), newest first.
    pub async fn webhook_deliveries(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, WebhookError> {
        self.webhook(id).await?;
        Ok(self.store.webhook_deliveries(id, limit).await?)
    }

    /// "Send again": the delivery is due now (once more, with its `webhook-id`).
    pub async fn redeliver_webhook(&self, id: &str, delivery: i64) -> Result<(), WebhookError> {
        let now = self.store.clock().now();
        if !self.store.redeliver_webhook(id, delivery, now).await? {
            return Err(WebhookError::NoDelivery {
                webhook: id.to_owned(),
                delivery,
            });
        }
        Ok(())
    }
}
