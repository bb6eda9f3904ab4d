//! Generating, rotating, listing and removing keys: what `herald dkim` and `/v1/dkim` both do.

use serde_json::{Value, json};

use super::{
    Algorithm, DkimError, StoredKey, keys::SecretKey, normalize_domain, normalize_selector,
    record::zone_line,
};
use crate::{
    service::format_rfc3339,
    store::{Store, StoreError},
};

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(transparent)]
    Invalid(#[from] DkimError),
    #[error("{domain} already has a key with selector {selector}")]
    Exists { domain: String, selector: String },
    #[error(
        "{domain} already signs with selector {selector}: use rotate to replace it (the old key stays listed, \
         retired, until you remove it)"
    )]
    HasActive { domain: String, selector: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes and stores a key for `domain`. With `rotate`, the new key takes over from the domain's keys, which
/// are retired; without, a domain that already has an active key is refused.
pub async fn generate_key(
    store: &Store,
    secret: Option<&SecretKey>,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    rotate: bool,
) -> Result<StoredKey, ManageError> {
    let domain = normalize_domain(domain)?;
    let selector = normalize_selector(selector)?;
    let keys = store.dkim_keys().await?;
    if keys
        .iter()
        .any(|k| k.domain == domain && k.selector == selector)
    {
        return Err(ManageError::Exists { domain, selector });
    }
    if !rotate
        && let Some(active) = keys
            .iter()
            .find(|k| k.domain == domain && k.retired_at.is_none())
    {
        return Err(ManageError::HasActive {
            domain,
            selector: active.selector.clone(),
        });
    }
    let now = store.clock().now();
    let secret = secret.cloned();
    let (d, s) = (domain.clone(), selector.clone());
    // RSA generation is CPU work of up to seconds: not on an async worker.
    let key = tokio::task::spawn_blocking(move || {
        super::keys::generate(&d, &s, algorithm, secret.as_ref(), now)
    })
    .await
    .map_err(|e| DkimError::Generate {
        algorithm,
        reason: e.to_string(),
    })??;
    if !store.put_dkim_key(&key).await? {
        return Err(ManageError::Exists { domain, selector });
    }
    if rotate {
        store.retire_dkim_keys(&domain, &selector, now).await?;
    }
    Ok(key)
}

/// Deletes one key; `false` if there was none.
pub async fn remove_key(store: &Store, domain: &str, selector: &str) -> Result<bool, ManageError> {
    let domain = normalize_domain(domain)?;
    let selector = normalize_selector(selector)?;
    Ok(store.delete_dkim_key(&domain, &selector).await?)
}

/// Whether `key` is the one its domain signs with now: the newest not retired.
pub fn is_active(key: &StoredKey, all: &[StoredKey]) -> bool {
    key.retired_at.is_none()
        && !all.iter().any(|other| {
            other.domain == key.domain
                && other.retired_at.is_none()
                && (other.created_at, &other.selector) > (key.created_at, &key.selector)
        })
}

/// A key as the API and `herald dkim list --json` show it: the public side only.
pub fn key_json(key: &StoredKey, active: bool) -> Value {
    json!({
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "active": active,
        "encrypted": key.encrypted,
        "created_at": format_rfc3339(key.created_at),
        "retired_at": key.retired_at.map(format_rfc3339),
        "dns_name": key.dns_name(),
        "dns_record": key.dns_record(),
        "zone_line": zone_line(&key.selector, &key.domain, &key.dns_record()),
    })
}
