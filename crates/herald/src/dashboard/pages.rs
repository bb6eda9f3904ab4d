//! The dashboard's pages and the actions their forms post.

use axum::{
    Extension, Form, Json,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use minijinja::context;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    PageError, human_bytes, live, mail, render,
    session::{CsrfForm, Viewer},
    urlencode,
};
use crate::{
    app::{ApiError, AppState},
    service::parse_rfc3339,
    store::{CancelOutcome, MessageStatus, Millis, SearchQuery, TemplateSource},
    templates,
};

const PAGE_SIZE: u32 = 50;

/// The context every page shares: which nav entry is current, and the viewer.
pub(super) fn base(page: &str, viewer: &Viewer, state: &AppState) -> minijinja::Value {
    context! {
        page => page,
        csrf => viewer.csrf.clone(),
        signed_in => viewer.signed_in,
        capture_inbox => state.capture_inbox,
    }
}

/// Any serialisable value for a page's context.
pub(super) fn v<T: serde::Serialize>(value: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

fn page(name: &str, context: minijinja::Value) -> Result<Html<String>, PageError> {
    render(name, context).map(Html)
}

/// `GET /`: counts by status, the chart, the relays; `app.js` keeps them live from `/events`.
pub async fn overview(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, PageError> {
    let pulse = live::pulse(&state).await?;
    let snapshot = live::snapshot(&state, pulse).await?;
    page(
        "overview.html",
        context! {
            snapshot => v(&snapshot),
            ..base("overview", &viewer, &state)
        },
    )
}

/// The archive's filters, as the form sends them (empty fields mean "any").
#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub struct ArchiveQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
    /// The inbox's selected message.
    #[serde(default)]
    id: String,
}

/// A time from the filter form: `2026-11-26`, `2026-11-26T09:30` (what `<input type=datetime-local>` sends)
/// or full RFC 3339; the first two are UTC.
fn parse_filter_time(field: &str, text: &str) -> Result<Option<Millis>, PageError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let candidate = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_owned(),
    };
    parse_rfc3339(&candidate).map(Some).map_err(|_| {
        PageError::bad_request(
            field,
            format!("{text:?} is not a time like 2026-11-26 or 2026-11-26T09:30 (UTC)"),
        )
    })
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

impl ArchiveQuery {
    /// A control character (NUL included) in a text filter is the caller's mistake, named as such.
    fn check_text(&self) -> Result<(), PageError> {
        for (field, value) in [
            ("q", &self.q),
            ("to", &self.to),
            ("tag", &self.tag),
            ("id", &self.id),
        ] {
            crate::service::check_search_text(Some(value))
                .map_err(|message| PageError::bad_request(field, message))?;
        }
        Ok(())
    }

    fn to_search(&self) -> Result<SearchQuery, PageError> {
        self.check_text()?;
        let status = match self.status.trim() {
            "" => None,
            s => Some(
                s.parse::<MessageStatus>()
                    .map_err(|e| PageError::bad_request("status", e))?,
            ),
        };
        Ok(SearchQuery {
            status,
            to: non_empty(&self.to),
            tag: non_empty(&self.tag),
            text: non_empty(&self.q),
            since: parse_filter_time("since", &self.since)?,
            until: parse_filter_time("until", &self.until)?,
            limit: PAGE_SIZE,
            cursor: non_empty(&self.cursor),
        })
    }

    /// This query's URL with another cursor (for "next page").
    fn with_cursor(&self, cursor: &str) -> String {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("q", &self.q),
            ("status", &self.status),
            ("to", &self.to),
            ("tag", &self.tag),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !value.trim().is_empty() {
                url.append_pair(key, value);
            }
        }
        url.append_pair("cursor", cursor);
        url.finish()
    }

    fn filtered(&self) -> bool {
        [
            &self.q,
            &self.status,
            &self.to,
            &self.tag,
            &self.since,
            &self.until,
        ]
        .iter()
        .any(|v| !v.trim().is_empty())
    }
}

/// `GET /messages`: the archive, newest first, with search and filters; a bad filter is a 400 that keeps the
/// form as it was and says which field is wrong.
pub async fn messages(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Response, PageError> {
    let (status, error, result) = match query.to_search() {
        Ok(search) => match state.service.search(&search).await {
            Ok(page) => (StatusCode::OK, None, Some(page)),
            Err(crate::store::StoreError::InvalidQuery(message)) => {
                (StatusCode::BAD_REQUEST, Some(message), None)
            }
            Err(other) => return Err(other.into()),
        },
        Err(error) => (error.status, Some(error.message), None),
    };
    let next = result
        .as_ref()
        .and_then(|p| p.next_cursor.as_deref())
        .map(|c| format!("/messages?{}", query.with_cursor(c)));
    let html = render(
        "messages.html",
        context! {
            query => v(&query),
            filtered => query.filtered(),
            paged => !query.cursor.is_empty(),
            statuses => MessageStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            items => v(&result.map(|p| p.items).unwrap_or_default()),
            next => next,
            error => error,
            ..base("messages", &viewer, &state)
        },
    )?;
    Ok((status, Html(html)).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    pub(super) notice: Option<String>,
}

fn notice_text(notice: Option<&str>) -> Option<&'static str> {
    match notice? {
        "cancelled" => Some("The message was cancelled."),
        "resent" => Some("This message is a resend: it was queued just now."),
        "saved" => Some("Template saved."),
        _ => None,
    }
}

/// `GET /messages/{id}`: recipients, timeline, the HTML in a sandboxed frame, text, headers, attachments.
pub async fn message(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Result<Html<String>, PageError> {
    let view = state
        .service
        .message(&id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("There is no message with id {id:?}.")))?;
    let mail = mail_of(&state, &id).await?;
    let status = view.status;
    let resent_from = view
        .metadata
        .get("resent_from")
        .and_then(Value::as_str)
        .map(str::to_owned);
    page(
        "message.html",
        context! {
            message => v(&view),
            mail => v(&mail),
            cancellable => status.is_cancellable(),
            resendable => status.is_final(),
            resent_from => resent_from,
            metadata => serde_json::to_string_pretty(&view.metadata).unwrap_or_default(),
            notice => notice_text(notice.notice.as_deref()),
            ..base("messages", &viewer, &state)
        },
    )
}

/// The stored message taken apart for reading; `None` when its body was pruned (or it does not parse).
async fn mail_of(state: &AppState, id: &str) -> Result<Option<mail::MailView>, PageError> {
    Ok(state
        .service
        .raw(id)
        .await?
        .and_then(|raw| mail::parse(&raw)))
}

async fn raw_bytes(state: &AppState, id: &str) -> Result<bytes::Bytes, PageError> {
    state.service.raw(id).await?.ok_or_else(|| {
        PageError::not_found(format!(
            "Message {id:?} does not exist, or its body was pruned by retention."
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct HtmlQuery {
    images: Option<String>,
}

/// The policy of a message's HTML: no script, no form, no frame, nothing fetched but its own inline parts
/// (`'self'`: the `attachments/{n}` URLs its `cid:` references become); remote images only when the reader
/// asks (they tell the sender the mail was opened, and from where). `sandbox` applies even if the page is
/// opened on its own rather than in the dashboard's `sandbox` frame.
fn html_policy(remote_images: bool) -> String {
    let images = if remote_images {
        "'self' data: https: http:"
    } else {
        "'self' data:"
    };
    format!(
        "sandbox; default-src 'none'; img-src {images}; style-src 'unsafe-inline'; font-src data:; \
         form-action 'none'; frame-ancestors 'self'; base-uri 'none'"
    )
}

/// `GET /messages/{id}/html`: the message's HTML body, with inline (`cid:`) images, for the preview frame.
pub async fn message_html(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(query): Query<HtmlQuery>,
) -> Result<Response, PageError> {
    let bytes = raw_bytes(&state, &id).await?;
    let html = mail::html_body(&bytes, |index| {
        format!("attachments/{index}{}", viewer.part_query(&id, index))
    })
    .ok_or_else(|| PageError::not_found("This message has no HTML part."))?;
    if html.len() > HTML_PREVIEW_LIMIT {
        return Err(PageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "This message's HTML is {} and is not shown here (the limit is {}); download the .eml instead.",
                human_bytes(html.len() as u64),
                human_bytes(HTML_PREVIEW_LIMIT as u64)
            ),
        ));
    }
    Ok(html_response(html, query.images.as_deref() == Some("1")))
}

/// The largest HTML body the preview frame is sent: the inbox opens the newest message by itself, so what
/// one message costs to show is bounded whatever its sender wrote.
pub const HTML_PREVIEW_LIMIT: usize = 4 * 1024 * 1024;

fn html_response(html: String, remote_images: bool) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::CONTENT_SECURITY_POLICY, html_policy(remote_images)),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
        ],
        html,
    )
        .into_response()
}

/// `GET /messages/{id}/raw`: the exact bytes sent, as an `.eml` download.
pub async fn message_raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let bytes = raw_bytes(&state, &id).await?;
    let file = format!(
        "{}.eml",
        id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "message/rfc822".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// `Content-Disposition` for a download, with the name in RFC 6266/5987 form for any language and a plain
/// ASCII fallback.
fn attachment_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = urlencode(name).replace('+', "%20");
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// `GET /messages/{id}/attachments/{index}`: one attachment, decoded, always as a download (never rendered
/// in the dashboard's origin).
pub async fn message_attachment(
    State(state): State<AppState>,
    Path((id, index)): Path<(String, usize)>,
) -> Result<Response, PageError> {
    let bytes = raw_bytes(&state, &id).await?;
    let (name, content_type, data) = mail::attachment(&bytes, index).ok_or_else(|| {
        PageError::not_found(format!("Message {id:?} has no attachment {index}."))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, attachment_disposition(&name)),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
            // An image named many times by the HTML is fetched once.
            (header::CACHE_CONTROL, "private, max-age=600".to_owned()),
        ],
        data,
    )
        .into_response())
}

/// `POST /messages/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    match state.service.cancel(&id).await? {
        CancelOutcome::Cancelled => {
            Ok(Redirect::to(&format!("/messages/{id}?notice=cancelled")).into_response())
        }
        CancelOutcome::NotCancellable(status) => Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "Message {id} is {status}: only scheduled, queued or deferred messages can be cancelled."
            ),
        )),
        CancelOutcome::NotFound => Err(PageError::not_found(format!(
            "There is no message with id {id:?}."
        ))),
    }
}

/// `POST /messages/{id}/resend`: a new message from the same bytes; opens it.
pub async fn resend(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    match state.service.resend(&id).await? {
        Some(new_id) => {
            state.service.wake_delivery();
            Ok(Redirect::to(&format!("/messages/{new_id}?notice=resent")).into_response())
        }
        None => Err(PageError::not_found(format!(
            "Message {id:?} does not exist, or its body was pruned by retention: it cannot be resent."
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct TemplatesQuery {
    new: Option<String>,
}

/// `GET /templates`: the stored templates; `?new=NAME` opens the editor for a new one.
pub async fn templates(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<TemplatesQuery>,
) -> Result<Response, PageError> {
    let mut error = None;
    if let Some(name) = query.new.as_deref().map(str::trim) {
        match templates::check_name(name) {
            Ok(()) => {
                return Ok(Redirect::to(&format!("/templates/{}", urlencode(name))).into_response());
            }
            Err(e) => error = Some(format!("name: {e}")),
        }
    }
    let items: Vec<Value> = state
        .service
        .templates()
        .await?
        .iter()
        .map(|t| {
            json!({
                "name": t.source.name,
                "subject": t.source.subject,
                "has_text": t.source.text.is_some(),
                "has_html": t.source.html.is_some(),
                "updated_at": t.updated_at,
            })
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let html = render(
        "templates.html",
        context! { items => v(&items), error => error, new_name => query.new, ..base("templates", &viewer, &state) },
    )?;
    Ok((status, Html(html)).into_response())
}

/// Where a template error is, for the editor to point at.
fn template_error_json(error: &crate::templates::TemplateError) -> Value {
    json!({
        "message": error.to_string(),
        "part": error.part().map(|p| p.as_str()),
        "template": error.template(),
        "line": error.location().map(|l| l.line),
        "column": error.location().map(|l| l.column),
    })
}

/// What the editor shows of a template: its parts, and the list its messages unsubscribe from (issue 12).
struct EditorTemplate<'a> {
    source: &'a TemplateSource,
    unsubscribe_list: Option<&'a str>,
    /// Why the list was refused, shown at its field (apart from the template error, which the live preview
    /// replaces).
    unsubscribe_error: Option<String>,
}

fn editor(
    state: &AppState,
    viewer: &Viewer,
    template: EditorTemplate<'_>,
    exists: bool,
    error: Option<Value>,
    notice: Option<&str>,
) -> Result<String, PageError> {
    let source = template.source;
    render(
        "template.html",
        context! {
            name => source.name.clone(),
            subject => source.subject.clone(),
            text => source.text.clone().unwrap_or_default(),
            html => source.html.clone().unwrap_or_default(),
            unsubscribe_list => template.unsubscribe_list.unwrap_or_default(),
            unsubscribe_error => template.unsubscribe_error,
            public_url => state.service.public_url.is_some(),
            exists => exists,
            sample => if exists { "{}" } else { "{\"name\": \"Ana\"}" },
            error => v(&error),
            notice => notice,
            ..base("templates", viewer, state)
        },
    )
}

/// `GET /templates/{name}`: the editor, with a live preview beside it (`app.js` posts drafts to
/// `/templates/{name}/preview`).
pub async fn template_editor(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> Result<Html<String>, PageError> {
    templates::check_name(&name).map_err(|e| PageError::bad_request("name", e))?;
    let stored = state.service.template(&name).await?;
    let exists = stored.is_some();
    let unsubscribe_list = stored.as_ref().and_then(|t| t.unsubscribe_list.clone());
    // A new template starts from a small working example, so the preview shows something at once.
    let source = stored.map(|t| t.source).unwrap_or(TemplateSource {
        name: name.clone(),
        subject: "Hello {{ name }}".into(),
        text: None,
        html: Some("<p>Hello <b>{{ name }}</b>!</p>\n".into()),
    });
    editor(
        &state,
        &viewer,
        EditorTemplate {
            source: &source,
            unsubscribe_list: unsubscribe_list.as_deref(),
            unsubscribe_error: None,
        },
        exists,
        None,
        notice_text(notice.notice.as_deref()),
    )
    .map(Html)
}

#[derive(Debug, Deserialize)]
pub struct TemplateForm {
    csrf: Option<String>,
    subject: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    html: String,
    /// The list the template's messages unsubscribe from (issue 12); empty: none.
    #[serde(default)]
    unsubscribe_list: String,
}

/// Browsers send textarea lines with CRLF; templates are stored with LF, as the API stores them.
fn part_of(text: &str) -> Option<String> {
    let text = text.replace("\r\n", "\n");
    (!text.trim().is_empty()).then_some(text)
}

/// `POST /templates/{name}`: compiles and saves; a template error shows the editor again (422) with the
/// error at its part and line.
pub async fn save_template(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(form): Form<TemplateForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    templates::check_name(&name).map_err(|e| PageError::bad_request("name", e))?;
    let source = TemplateSource {
        name: name.clone(),
        subject: form.subject.replace("\r\n", "\n"),
        text: part_of(&form.text),
        html: part_of(&form.html),
    };
    let list = form.unsubscribe_list.trim();
    let asked = (!list.is_empty()).then(|| json!({ "list": list }));
    // The same check as the API's (the list's syntax, HERALD_PUBLIC_URL).
    let (error, unsubscribe_error) = match state.service.template_unsubscribe(asked) {
        Ok(unsubscribe) => match state
            .service
            .save_template(&source, unsubscribe.as_deref())
            .await
        {
            Ok(()) => (None, None),
            Err(templates::LoadError::Template(error)) => (Some(template_error_json(&error)), None),
            Err(templates::LoadError::Store(e)) => return Err(e.into()),
            Err(other) => {
                return Err(PageError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    other.to_string(),
                ));
            }
        },
        Err(crate::service::SubmitError::Invalid(e)) => (None, Some(e.message)),
        Err(other) => (None, Some(other.to_string())),
    };
    if error.is_some() || unsubscribe_error.is_some() {
        let exists = state.service.template(&name).await?.is_some();
        let html = editor(
            &state,
            &viewer,
            EditorTemplate {
                source: &source,
                unsubscribe_list: Some(list),
                unsubscribe_error,
            },
            exists,
            error,
            None,
        )?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(html)).into_response());
    }
    Ok(Redirect::to(&format!("/templates/{}?notice=saved", urlencode(&name))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewDraft {
    subject: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    html: String,
    /// Sample data as the author typed it (JSON text).
    #[serde(default)]
    data: String,
}

/// `POST /templates/{name}/preview` (JSON, with `X-CSRF-Token`): renders an unsaved draft with sample data,
/// exactly as a message would carry it; errors name the part, line and column.
pub async fn preview_template(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    draft: Result<Json<PreviewDraft>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if viewer
        .verify(headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "the X-CSRF-Token header is missing or out of date; reload the page",
        ));
    }
    templates::check_name(&name).map_err(|e| ApiError::invalid("name", e))?;
    let Json(draft) = draft.map_err(|e| ApiError::invalid("", e.body_text()))?;
    let data: Value = if draft.data.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&draft.data)
            .map_err(|e| ApiError::invalid("data", format!("the sample data is not JSON: {e}")))?
    };
    if !data.is_object() {
        return Err(ApiError::invalid(
            "data",
            "the sample data must be a JSON object of template variables",
        ));
    }
    let source = TemplateSource {
        name,
        subject: draft.subject,
        text: part_of(&draft.text),
        html: part_of(&draft.html),
    };
    match state.service.preview_draft(source, &data).await {
        Ok(rendered) => Ok(Json(json!({
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }))
        .into_response()),
        Err(templates::LoadError::Template(error)) => Ok(preview_error(&error)),
        Err(templates::LoadError::NotFound(missing)) => Err(ApiError::invalid(
            "html",
            format!("the template refers to {missing:?}, which is not stored"),
        )),
        Err(e) => Err(load_error(e)),
    }
}

/// A preview that could not run: the store's error, or a busy renderer (503).
fn load_error(error: templates::LoadError<crate::store::StoreError>) -> ApiError {
    match error {
        templates::LoadError::Store(e) => e.into(),
        other => ApiError::from(crate::service::SubmitError::from_load(other, "data")),
    }
}

fn preview_error(error: &crate::templates::TemplateError) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "error": template_error_json(error) })),
    )
        .into_response()
}

/// `GET /inbox`: the capture inbox, a list and a reading pane like a mail client's. With relays configured
/// nothing is captured, and the page says so.
pub async fn inbox(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Html<String>, PageError> {
    query.check_text()?;
    let page_result = if state.capture_inbox {
        Some(
            state
                .service
                .search(&SearchQuery {
                    status: Some(MessageStatus::Delivered),
                    text: non_empty(&query.q),
                    limit: PAGE_SIZE,
                    cursor: non_empty(&query.cursor),
                    ..Default::default()
                })
                .await?,
        )
    } else {
        None
    };
    let items = page_result
        .as_ref()
        .map(|p| p.items.clone())
        .unwrap_or_default();
    let selected_id = non_empty(&query.id).or_else(|| items.first().map(|m| m.id.clone()));
    let selected = match &selected_id {
        Some(id) => state.service.message(id).await?,
        None => None,
    };
    let mail = match &selected {
        Some(view) => mail_of(&state, &view.id).await?,
        None => None,
    };
    let next = page_result
        .as_ref()
        .and_then(|p| p.next_cursor.as_deref())
        .map(|c| format!("/inbox?{}", query.with_cursor(c)));
    page(
        "inbox.html",
        context! {
            items => v(&items),
            selected => v(&selected),
            mail => v(&mail),
            query => v(&query),
            next => next,
            ..base("inbox", &viewer, &state)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_times_accept_dates_and_form_times_and_name_the_field() {
        assert_eq!(
            parse_filter_time("since", "2026-11-26").unwrap(),
            Some(parse_rfc3339("2026-11-26T00:00:00Z").unwrap())
        );
        assert_eq!(
            parse_filter_time("since", "2026-11-26T09:30").unwrap(),
            Some(parse_rfc3339("2026-11-26T09:30:00Z").unwrap())
        );
        assert_eq!(parse_filter_time("since", " ").unwrap(), None);
        let error = parse_filter_time("until", "yesterday").unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(error.message.starts_with("until:"), "{}", error.message);
    }

    #[test]
    fn downloads_keep_any_language_in_the_file_name() {
        assert_eq!(
            attachment_disposition("Rechnung März.pdf"),
            "attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
        );
    }

    #[test]
    fn message_html_runs_no_script_and_fetches_no_remote_image_by_default() {
        let policy = html_policy(false);
        assert!(policy.starts_with("sandbox;"));
        assert!(policy.contains("default-src 'none'"));
        assert!(policy.contains("img-src 'self' data:;"));
        assert!(html_policy(true).contains("img-src 'self' data: https: http:"));
    }
}
