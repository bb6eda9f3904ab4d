//! `GET /dkim` (issue 13): the DKIM keys and the DNS records to publish for them. Read-only: keys are made and
//! rotated with `herald dkim` or `/v1/dkim`, where the private key is created and never shown.

use axum::{Extension, extract::State, response::Html};
use minijinja::context;

use super::{PageError, render, session::Viewer};
use crate::{app::AppState, dkim::manage};

pub async fn keys(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, PageError> {
    let keys = state.service.dkim_keys().await?;
    let items: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| manage::key_json(k, manage::is_active(k, &keys)))
        .collect();
    render(
        "dkim.html",
        context! {
            items => minijinja::Value::from(minijinja::value::Serde(&items)),
            secret_key => state.service.dkim.secret().is_some(),
            page => "dkim",
            csrf => viewer.csrf.clone(),
            signed_in => viewer.signed_in,
            capture_inbox => state.capture_inbox,
        },
    )
    .map(Html)
}
