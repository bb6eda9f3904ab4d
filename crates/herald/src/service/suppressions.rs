//! The suppression list and one-click unsubscribe (issue 12): checked entries in, pages out, and the
//! signed tokens of unsubscribe links (and, for the bounce intake, any other link token).

use std::sync::Arc;

use herald_mime::Address;

use super::Service;
use crate::{
    link_tokens::{LinkTokenError, LinkTokens, STORED_KEY_NAME},
    request::RequestError,
    store::{
        Millis, NewSuppression, StoreError, StoredTemplate, Suppression, SuppressionPage,
        SuppressionQuery, SuppressionReason,
    },
};

/// The purpose an unsubscribe token is signed for (see [`crate::link_tokens`]).
pub const UNSUBSCRIBE_PURPOSE: &str = "unsubscribe";

/// Most entries written in one commit by an import: a million-line CSV must not hold the SQLite writer (and
/// every accept behind it) for seconds.
const IMPORT_CHUNK: usize = 5_000;

/// Longest address kept (RFC 5321 §4.5.3.1.3: a path is at most 256 octets, so an address 254).
const MAX_ADDRESS: usize = 254;

/// Why an entry or an unsubscribe was refused.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("{0}")]
    Invalid(RequestError),
    /// The link token is not one Herald made for this purpose.
    #[error(transparent)]
    Token(#[from] LinkTokenError),
    /// The token is genuine but its message is gone (pruned or deleted).
    #[error("the message this link was made for no longer exists")]
    UnknownMessage,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SuppressionError {
    SuppressionError::Invalid(RequestError {
        field: field.into(),
        message: message.into(),
    })
}

/// What an unsubscribe link did: this address no longer gets this list's mail (all mail: `list` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribed {
    pub address: String,
    pub list: Option<String>,
    pub message_id: String,
}

/// Checks a suppression's address (`field` names it in the error): one address, within length.
pub fn check_address(address: &str, field: &str) -> Result<(), SuppressionError> {
    let address = address.trim();
    if address.len() > MAX_ADDRESS {
        return Err(invalid(
            field,
            format!("longer than {MAX_ADDRESS} characters"),
        ));
    }
    Address::parse(address)
        .map(drop)
        .map_err(|e| invalid(field, format!("not an email address: {e}")))
}

/// Checks a scope (a tag or list name): the same rule as tags, 1 to 128 characters, no control characters.
pub fn check_scope(scope: &str, field: &str) -> Result<(), SuppressionError> {
    if scope.is_empty() || scope.chars().count() > 128 || scope.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be 1 to 128 characters, no control characters",
        ));
    }
    Ok(())
}

impl Service {
    /// Puts `address` on the suppression list (for `scope`, a tag or list, or for every message), writing a
    /// `suppressed` line on `source_message`'s timeline in the same transaction when it is given. The entry
    /// already there for that address and scope takes the new reason and source and keeps the later expiry.
    /// For the faces and the bounce intake alike.
    pub async fn suppress(
        &self,
        address: &str,
        scope: Option<&str>,
        reason: SuppressionReason,
        source_message: Option<&str>,
        expires_at: Option<Millis>,
    ) -> Result<(), SuppressionError> {
        check_address(address, "address")?;
        if let Some(scope) = scope {
            check_scope(scope, "scope")?;
        }
        self.store
            .suppress(vec![NewSuppression {
                address: address.trim().to_owned(),
                scope: scope.map(str::to_owned),
                reason,
                source_message: source_message.map(str::to_owned),
                expires_at,
            }])
            .await?;
        Ok(())
    }

    /// Writes checked entries (an import), a commit per [`IMPORT_CHUNK`]; answers how many.
    pub async fn suppress_many(&self, entries: Vec<NewSuppression>) -> Result<u64, StoreError> {
        let mut written = 0;
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let chunk: Vec<NewSuppression> = entries.by_ref().take(IMPORT_CHUNK).collect();
            written += self.store.suppress(chunk).await?;
        }
        Ok(written)
    }

    pub async fn suppressions(
        &self,
        query: &SuppressionQuery,
    ) -> Result<SuppressionPage, StoreError> {
        self.store.suppressions(query).await
    }

    /// Every entry (all scopes) of one address.
    pub async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>, StoreError> {
        self.store.suppressions_of(address).await
    }

    /// Removes `address`'s entry for `scope` (`Some("")`: its unscoped one), or all its entries.
    pub async fn delete_suppression(
        &self,
        address: &str,
        scope: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.store.delete_suppression(address, scope).await
    }

    /// The link-token key: from `HERALD_SECRET_KEY` if [`Self::use_secret_for_links`] was called, otherwise
    /// the one stored (made on first use by whichever node comes first).
    pub async fn link_tokens(&self) -> Result<LinkTokens, SuppressionError> {
        let tokens = self
            .link_tokens
            .get_or_try_init(|| async {
                let candidate = LinkTokens::random_key()?;
                let key = self.store.store_secret(STORED_KEY_NAME, &candidate).await?;
                Ok::<_, SuppressionError>(LinkTokens::from_key(&key)?)
            })
            .await?;
        Ok(tokens.clone())
    }

    /// Derives link tokens from `HERALD_SECRET_KEY` instead of the stored key.
    pub fn use_secret_for_links(&mut self, secret: &str) -> Result<(), LinkTokenError> {
        let tokens = LinkTokens::from_secret(secret)?;
        self.link_tokens = Arc::new(tokio::sync::OnceCell::new_with(Some(tokens)));
        Ok(())
    }

    /// The token of message `id`'s unsubscribe link (its id is a UUID, 16 bytes signed).
    pub async fn unsubscribe_token(&self, id: &str) -> Result<String, SuppressionError> {
        let uuid = uuid::Uuid::parse_str(id).map_err(|_| invalid("id", "not a message id"))?;
        Ok(self
            .link_tokens()
            .await?
            .sign(UNSUBSCRIBE_PURPOSE, uuid.as_bytes()))
    }

    /// The message an unsubscribe token names, checked, without acting on it (the confirmation page).
    pub async fn unsubscribe_preview(&self, token: &str) -> Result<Unsubscribed, SuppressionError> {
        let payload = self
            .link_tokens()
            .await?
            .verify(UNSUBSCRIBE_PURPOSE, token)?;
        let uuid = uuid::Uuid::from_slice(&payload).map_err(|_| LinkTokenError::Malformed)?;
        let id = uuid.to_string();
        let (address, list) = self
            .store
            .unsubscribe_target(&id)
            .await?
            .ok_or(SuppressionError::UnknownMessage)?;
        Ok(Unsubscribed {
            address,
            list,
            message_id: id,
        })
    }

    /// Acts on an unsubscribe token (the link's POST, or the `mailto:` form through the bounce intake):
    /// its message's recipient is suppressed for the message's list, with a line on its timeline.
    pub async fn unsubscribe(&self, token: &str) -> Result<Unsubscribed, SuppressionError> {
        let target = self.unsubscribe_preview(token).await?;
        self.store
            .suppress(vec![NewSuppression {
                address: target.address.clone(),
                scope: target.list.clone(),
                reason: SuppressionReason::Unsubscribe,
                source_message: Some(target.message_id.clone()),
                expires_at: None,
            }])
            .await?;
        Ok(target)
    }
}

/// What a request's `unsubscribe` field says (issue 12), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UnsubscribeField {
    /// Not given: a message made from a stored template gets the template's unsubscribe, if it has one.
    Absent,
    /// `"unsubscribe": null`: no link, even when the template has one (a receipt or a transactional copy sent
    /// with a list's template).
    Off,
    /// `{"list": "newsletter"}`.
    List(String),
}

impl UnsubscribeField {
    /// Takes the field out of a request and checks it: an object with one field, `list`, a valid scope.
    pub(super) fn take(
        object: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, super::SubmitError> {
        let value = match object.remove("unsubscribe") {
            None => return Ok(Self::Absent),
            Some(serde_json::Value::Null) => return Ok(Self::Off),
            Some(value) => value,
        };
        let wrong = || {
            super::invalid(
                "unsubscribe",
                "must be an object {\"list\": \"name\"}, or null for none",
            )
        };
        let serde_json::Value::Object(mut fields) = value else {
            return Err(wrong());
        };
        let list = match fields.remove("list") {
            Some(serde_json::Value::String(list)) => list,
            Some(_) => return Err(super::invalid("unsubscribe.list", "must be a string")),
            None => {
                return Err(super::invalid(
                    "unsubscribe.list",
                    "missing: the list the recipient unsubscribes from",
                ));
            }
        };
        if let Some(unknown) = fields.keys().next() {
            return Err(super::invalid(
                format!("unsubscribe.{unknown}"),
                "unknown field (unsubscribe has `list`)",
            ));
        }
        check_scope(&list, "unsubscribe.list").map_err(|e| match e {
            SuppressionError::Invalid(e) => super::SubmitError::Invalid(e),
            other => super::invalid("unsubscribe.list", other.to_string()),
        })?;
        Ok(Self::List(list))
    }
}

/// What `"unsubscribe": {"list": …}` asks of a message: the List-Unsubscribe headers (RFC 2369, RFC 8058)
/// with a link token per message, and the list its link suppresses the recipient for.
#[derive(Debug, Clone)]
pub(super) struct UnsubscribeLinks {
    tokens: LinkTokens,
    /// `HERALD_PUBLIC_URL` without a trailing `/`.
    public_url: String,
    bounce_domain: Option<String>,
    pub(super) list: String,
    /// The stored template this unsubscribe comes from; `None`: the request's own field.
    pub(super) template: Option<String>,
}

/// The headers `unsubscribe` writes; a request may not write them itself as well.
pub(super) const UNSUBSCRIBE_HEADERS: [&str; 2] = ["List-Unsubscribe", "List-Unsubscribe-Post"];

/// Says, after `message`, that the unsubscribe comes from `template` (when it does) and how to send without
/// it: a client that never wrote `unsubscribe` must learn where the refusal comes from.
pub(super) fn from_template(message: &str, template: Option<&str>) -> String {
    match template {
        Some(name) => format!(
            "{message} (the unsubscribe comes from template {name:?}; give `\"unsubscribe\": null` to send \
             without it)"
        ),
        None => message.to_owned(),
    }
}

impl UnsubscribeLinks {
    /// A new message id and the two headers whose links name it.
    pub(super) fn for_new_message(&self) -> (uuid::Uuid, [(String, serde_json::Value); 2]) {
        let id = uuid::Uuid::now_v7();
        let token = self.tokens.sign(UNSUBSCRIBE_PURPOSE, id.as_bytes());
        let mut value = format!("<{}/u/{token}>", self.public_url);
        if let Some(domain) = &self.bounce_domain {
            value.push_str(&format!(", <mailto:unsub+{token}@{domain}>"));
        }
        (
            id,
            [
                (UNSUBSCRIBE_HEADERS[0].to_owned(), value.into()),
                (
                    UNSUBSCRIBE_HEADERS[1].to_owned(),
                    "List-Unsubscribe=One-Click".into(),
                ),
            ],
        )
    }

    /// A refusal on `field` because of this unsubscribe, saying where it comes from.
    pub(super) fn refusal(&self, field: impl Into<String>, message: &str) -> super::SubmitError {
        super::invalid(field, from_template(message, self.template.as_deref()))
    }
}

impl Service {
    /// The unsubscribe of one message (or of every message of a batch): the request's field when given
    /// (`null` turns it off), else the stored `template`'s. It needs `HERALD_PUBLIC_URL` (where the link
    /// points): without it the request is refused on `unsubscribe`, rather than sending mail whose
    /// unsubscribe link goes nowhere.
    pub(super) async fn unsubscribe_links(
        &self,
        field: UnsubscribeField,
        template: Option<&StoredTemplate>,
    ) -> Result<Option<UnsubscribeLinks>, super::SubmitError> {
        let (list, from) = match (field, template) {
            (UnsubscribeField::List(list), _) => (list, None),
            (UnsubscribeField::Off, _) => return Ok(None),
            (UnsubscribeField::Absent, Some(stored)) => match &stored.unsubscribe_list {
                Some(list) => (list.clone(), Some(stored.source.name.clone())),
                None => return Ok(None),
            },
            (UnsubscribeField::Absent, None) => return Ok(None),
        };
        let public_url = self.unsubscribe_public_url(from.as_deref())?;
        let tokens = self.link_tokens().await.map_err(|e| match e {
            SuppressionError::Store(e) => super::SubmitError::Store(e),
            other => super::invalid("unsubscribe", other.to_string()),
        })?;
        Ok(Some(UnsubscribeLinks {
            tokens,
            public_url,
            bounce_domain: self.bounce_domain.clone(),
            list,
            template: from,
        }))
    }

    /// `HERALD_PUBLIC_URL` without a trailing `/`, or the refusal naming `unsubscribe`.
    fn unsubscribe_public_url(&self, template: Option<&str>) -> Result<String, super::SubmitError> {
        match &self.public_url {
            Some(url) => Ok(url.trim_end_matches('/').to_owned()),
            None => Err(super::invalid(
                "unsubscribe",
                from_template(
                    "needs HERALD_PUBLIC_URL (the address recipients reach Herald at) to be set on the server",
                    template,
                ),
            )),
        }
    }

    /// Checks the `unsubscribe` of a stored template (`PUT /v1/templates/{name}`, the dashboard's editor) as
    /// a message's is checked, `HERALD_PUBLIC_URL` included: a template whose every message would be refused
    /// is refused when it is stored. `null` or absent: none. Answers the list.
    pub fn template_unsubscribe(
        &self,
        value: Option<serde_json::Value>,
    ) -> Result<Option<String>, super::SubmitError> {
        let mut object = serde_json::Map::new();
        if let Some(value) = value {
            object.insert("unsubscribe".into(), value);
        }
        match UnsubscribeField::take(&mut object)? {
            UnsubscribeField::Absent | UnsubscribeField::Off => Ok(None),
            UnsubscribeField::List(list) => {
                self.unsubscribe_public_url(None)?;
                Ok(Some(list))
            }
        }
    }
}

/// Refuses a request's own List-Unsubscribe headers next to `unsubscribe` (which writes them).
pub(super) fn check_no_own_unsubscribe_headers<'a>(
    names: impl IntoIterator<Item = &'a String>,
    links: &UnsubscribeLinks,
) -> Result<(), super::SubmitError> {
    for name in names {
        if UNSUBSCRIBE_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.trim()))
        {
            return Err(links.refusal(
                format!("headers.{name}"),
                "is written by `unsubscribe`; give one or the other",
            ));
        }
    }
    Ok(())
}
