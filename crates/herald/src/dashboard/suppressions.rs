//! `GET /suppressions` (issue 12): the suppression list, searched by address, a page at a time. Read-only:
//! entries are added by bounces, unsubscribe links and the API (`/v1/suppressions`, CSV import), and removed
//! there.

use axum::{
    Extension,
    extract::{Query, State},
    response::Html,
};
use minijinja::context;
use serde::Deserialize;

use super::{PageError, render, session::Viewer, urlencode};
use crate::{app::AppState, store::SuppressionQuery};

#[derive(Debug, Deserialize)]
pub struct Params {
    q: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(params): Query<Params>,
) -> Result<Html<String>, PageError> {
    // Bounded like the API's search: the text is a client's.
    let q: String = params
        .q
        .unwrap_or_default()
        .trim()
        .chars()
        .take(254)
        .collect();
    let page = state
        .service
        .suppressions(&SuppressionQuery {
            contains: (!q.is_empty()).then(|| q.clone()),
            limit: 100,
            cursor: params.cursor.filter(|c| !c.is_empty()),
        })
        .await?;
    let items: Vec<serde_json::Value> = page
        .items
        .iter()
        .map(crate::api::suppression_json)
        .collect();
    let next = page.next_cursor.map(|cursor| {
        format!(
            "/suppressions?q={}&cursor={}",
            urlencode(&q),
            urlencode(&cursor)
        )
    });
    render(
        "suppressions.html",
        context! {
            items => minijinja::Value::from(minijinja::value::Serde(&items)),
            q => q,
            next => next,
            page => "suppressions",
            csrf => viewer.csrf.clone(),
            signed_in => viewer.signed_in,
            capture_inbox => state.capture_inbox,
        },
    )
    .map(Html)
}
