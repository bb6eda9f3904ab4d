//! Webhook endpoints as the API and the dashboard manage them: checked, created with a signing secret shown
//! once, changed, rotated (the old key keeps signing beside the new one for [`ROTATION_OVERLAP`]).
//!
//! The signing key must be usable to sign, so it cannot be stored hashed: with `HERALD_SECRET_KEY` set it is
//! sealed (ChaCha20-Poly1305 under a key derived for webhooks, bound to the endpoint's id), which protects it
//! in a database dump, a backup or a replica; without it, it is stored as it is, as safe as the database.

use std::time::Duration;

use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Value, json};

use super::{WebhookError, guard, sign};
use crate::{
    dkim::SecretKey,
    service::format_rfc3339,
    store::{
        DeliveryView, Millis, Store, WebhookChange, WebhookRow,
        webhooks::{EVENT_TYPES, events_column},
    },
};

/// How long the key before a rotation still signs (beside the new one), for receivers to switch over.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 1_000;
/// Most endpoints one Herald keeps: each one runs its own delivery loop on every node.
pub const MAX_ENDPOINTS: usize = 100;

/// What managing endpoints needs besides the store.
#[derive(Debug, Clone, Default)]
pub struct Management {
    pub allow_private: bool,
    /// From `HERALD_SECRET_KEY`: seals signing keys at rest.
    pub sealer: Option<SecretKey>,
}

/// The fields of a create or change request (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct EndpointFields {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

fn context(id: &str) -> Vec<u8> {
    let mut context = b"webhook\0".to_vec();
    context.extend_from_slice(id.as_bytes());
    context
}

impl Management {
    fn seal(&self, id: &str, key: &[u8]) -> Result<(Vec<u8>, bool), WebhookError> {
        match &self.sealer {
            Some(sealer) => Ok((
                sealer
                    .seal_bound(&context(id), key)
                    .map_err(|e| WebhookError::Secret(e.to_string()))?,
                true,
            )),
            None => Ok((key.to_vec(), false)),
        }
    }

    fn open(&self, id: &str, stored: &[u8], sealed: bool) -> Result<Vec<u8>, WebhookError> {
        if !sealed {
            return Ok(stored.to_vec());
        }
        self.sealer
            .as_ref()
            .and_then(|sealer| sealer.open_bound(&context(id), stored))
            .ok_or_else(|| WebhookError::Sealed(id.to_owned()))
    }

    /// The keys that sign now: the current one, and the one before a rotation until its overlap ends.
    pub fn signing_keys(
        &self,
        row: &WebhookRow,
        now: Millis,
    ) -> Result<Vec<Vec<u8>>, WebhookError> {
        let mut keys = vec![self.open(&row.id, &row.secret, row.sealed)?];
        if let (Some(previous), Some(until)) = (&row.previous_secret, row.previous_until)
            && until > now
        {
            keys.push(self.open(&row.id, previous, row.sealed)?);
        }
        Ok(keys)
    }

    async fn check_url(&self, text: &str) -> Result<String, WebhookError> {
        let invalid = |message| WebhookError::Invalid {
            field: "url",
            message,
        };
        let url = guard::check_url_form(text).map_err(invalid)?;
        guard::check_url_target(&url, self.allow_private)
            .await
            .map_err(invalid)?;
        Ok(url.to_string())
    }
}

fn new_key() -> Result<Vec<u8>, WebhookError> {
    let mut key = vec![0u8; sign::KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| WebhookError::Secret("no randomness from the operating system".into()))?;
    Ok(key)
}

/// Checks an event filter: known types, no repeats; empty means every type.
pub fn check_events(events: &[String]) -> Result<Vec<String>, WebhookError> {
    let mut checked: Vec<String> = Vec::with_capacity(events.len());
    for (i, name) in events.iter().enumerate() {
        if !EVENT_TYPES.contains(&name.as_str()) {
            return Err(WebhookError::Invalid {
                field: "events",
                message: format!(
                    "events[{i}]: unknown event type {:?} (known: {})",
                    truncate(name, 64),
                    EVENT_TYPES.join(", ")
                ),
            });
        }
        if !checked.contains(name) {
            checked.push(name.clone());
        }
    }
    debug_assert!(!events_column(&checked).contains(",,"));
    Ok(checked)
}

fn check_description(text: &str) -> Result<String, WebhookError> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(WebhookError::Invalid {
            field: "description",
            message: format!("longer than {MAX_DESCRIPTION} characters"),
        });
    }
    Ok(text.to_owned())
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Creates an endpoint; answers it and its secret (`whsec_…`), which is shown this once.
pub async fn create(
    store: &Store,
    management: &Management,
    fields: EndpointFields,
    now: Millis,
) -> Result<(WebhookRow, String), WebhookError> {
    let Some(url) = fields.url.as_deref() else {
        return Err(WebhookError::Invalid {
            field: "url",
            message: "missing: the endpoint's URL".into(),
        });
    };
    let url = management.check_url(url).await?;
    let events = check_events(fields.events.as_deref().unwrap_or_default())?;
    let description = check_description(fields.description.as_deref().unwrap_or_default())?;
    if store.webhooks().await?.len() >= MAX_ENDPOINTS {
        return Err(WebhookError::Invalid {
            field: "url",
            message: format!("at most {MAX_ENDPOINTS} webhook endpoints; delete one first"),
        });
    }
    let id = format!("wh_{}", uuid::Uuid::now_v7().simple());
    let key = new_key()?;
    let (secret, sealed) = management.seal(&id, &key)?;
    let row = WebhookRow {
        id,
        url,
        events,
        description,
        enabled: fields.enabled.unwrap_or(true),
        secret,
        sealed,
        previous_secret: None,
        previous_until: None,
        created_at: now,
        updated_at: now,
        failing_since: None,
        disabled_reason: None,
    };
    store.create_webhook(&row).await?;
    Ok((row, sign::secret_text(&key)))
}

/// Changes the given fields of an endpoint; answers it as it is now.
pub async fn update(
    store: &Store,
    management: &Management,
    id: &str,
    fields: EndpointFields,
    now: Millis,
) -> Result<WebhookRow, WebhookError> {
    let change = WebhookChange {
        url: match fields.url.as_deref() {
            Some(url) => Some(management.check_url(url).await?),
            None => None,
        },
        events: fields.events.as_deref().map(check_events).transpose()?,
        description: fields
            .description
            .as_deref()
            .map(check_description)
            .transpose()?,
        enabled: fields.enabled,
    };
    if !store.update_webhook(id, &change, now).await? {
        return Err(WebhookError::NotFound(id.to_owned()));
    }
    store
        .webhook(id)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_owned()))
}

/// A new signing key; the current one keeps signing beside it for [`ROTATION_OVERLAP`]. Answers the
/// endpoint and the new secret (shown this once).
pub async fn rotate(
    store: &Store,
    management: &Management,
    id: &str,
    now: Millis,
) -> Result<(WebhookRow, String), WebhookError> {
    let row = store
        .webhook(id)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_owned()))?;
    let current = management.open(&row.id, &row.secret, row.sealed)?;
    let key = new_key()?;
    let (secret, sealed) = management.seal(id, &key)?;
    // Sealed the way the new key is, so one flag describes both.
    let (previous, _) = management.seal(id, &current)?;
    let until = now + ROTATION_OVERLAP.as_millis() as Millis;
    if !store
        .rotate_webhook_secret(id, &secret, &previous, sealed, until, now)
        .await?
    {
        return Err(WebhookError::NotFound(id.to_owned()));
    }
    let row = store
        .webhook(id)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_owned()))?;
    Ok((row, sign::secret_text(&key)))
}

/// An endpoint as the API shows it: never its secret.
pub fn endpoint_json(row: &WebhookRow, now: Millis) -> Value {
    let rotation_until = row.previous_until.filter(|until| *until > now);
    json!({
        "id": row.id,
        "url": row.url,
        "events": if row.events.is_empty() { json!(EVENT_TYPES) } else { json!(row.events) },
        "all_events": row.events.is_empty(),
        "description": row.description,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "failing_since": row.failing_since.map(format_rfc3339),
        "previous_secret_valid_until": rotation_until.map(format_rfc3339),
        "created_at": format_rfc3339(row.created_at),
        "updated_at": format_rfc3339(row.updated_at),
    })
}

/// One delivery as the API shows it.
pub fn delivery_json(view: &DeliveryView) -> Value {
    json!({
        "id": view.id,
        "event_id": super::event_id(view.event_id),
        "event_type": view.event_type,
        "status": view.status,
        "attempts": view.attempts,
        "created_at": format_rfc3339(view.created_at),
        "next_attempt_at": if view.status == "pending" { view.next_attempt_at.map(format_rfc3339) } else { None },
        "last_attempt_at": view.last_attempt_at.map(format_rfc3339),
        "response_status": view.response_status,
        "latency_ms": view.latency_ms,
        "response_excerpt": view.response_excerpt,
        "error": view.error,
        "delivered_at": view.delivered_at.map(format_rfc3339),
    })
}
