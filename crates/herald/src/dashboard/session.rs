//! Who is looking: dashboard sign-in with the API token, the session cookie, and CSRF protection.
//!
//! When the API needs a token (`HERALD_API_TOKEN`, or tokens made by `herald token create`), the dashboard
//! asks for one on `/login` and then keeps a session: the cookie carries a random secret (`HttpOnly`,
//! `SameSite=Strict`), the store keeps only its SHA-256 and the hash of the token it was opened with, so
//! revoking that token (or rotating `HERALD_API_TOKEN`) ends the session on every node. Without any token the
//! dashboard is open, as the API is (`herald serve` allows that on loopback only).
//!
//! Every state-changing request must carry the CSRF token of its viewer (a form field or `X-CSRF-Token`)
//! and, when the browser sends one, an `Origin` of this server. Signed in, the CSRF token is derived from the
//! session secret; open, it is a random `SameSite=Strict` cookie (double submit), so that another site cannot
//! make a visitor's browser cancel or resend mail either way.

use std::time::Duration;

use axum::{
    Form,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Redirect, Response},
};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{PageError, render};
use crate::app::AppState;

pub const SESSION_COOKIE: &str = "herald_session";
pub const CSRF_COOKIE: &str = "herald_csrf";
/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The request's viewer, put in the request's extensions by [`guard`] for every dashboard page.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// What forms send back as `csrf`.
    pub csrf: String,
    /// Signed in with a session (a sign-out button makes sense).
    pub signed_in: bool,
    /// A CSRF cookie to set with this response (open dashboard, first visit).
    new_csrf_cookie: bool,
    /// Signed in: the session's store key and the hash of its token, which sign the URLs of inline parts.
    session: Option<([u8; 32], [u8; 32])>,
}

impl Viewer {
    /// The query that lets the preview frame fetch inline part `index` of message `id` without the session
    /// cookie: the frame is sandboxed (an opaque origin), so the browser sends it no `SameSite=Strict` cookie.
    /// The URL names the session (by its store key, not its secret) and carries an HMAC of the part keyed by
    /// the session's token hash, so it stops working with the session or the token, and is good for no other
    /// part. Empty on an open dashboard, where no cookie is needed.
    pub fn part_query(&self, id: &str, index: usize) -> String {
        match &self.session {
            Some((session_hash, token_hash)) => {
                let session = hex(session_hash);
                let signature = hex(&part_signature(token_hash, &session, id, index));
                format!("?s={session}&k={signature}")
            }
            None => String::new(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn part_signature(token_hash: &[u8; 32], session: &str, id: &str, index: usize) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(token_hash).expect("any key length");
    mac.update(format!("herald-part:{session}/{id}/{index}").as_bytes());
    mac.finalize().into_bytes().into()
}

/// `GET /messages/{id}/attachments/{n}?s=..&k=..` with a valid [`Viewer::part_query`] signature of a live
/// session: a viewer for that one request.
async fn part_grant(
    state: &AppState,
    method: &Method,
    uri: &axum::http::Uri,
) -> Result<Option<Viewer>, PageError> {
    if method != Method::GET {
        return Ok(None);
    }
    let Some(rest) = uri.path().strip_prefix("/messages/") else {
        return Ok(None);
    };
    let Some((id, index)) = rest.split_once("/attachments/") else {
        return Ok(None);
    };
    let Ok(index) = index.parse::<usize>() else {
        return Ok(None);
    };
    let query = uri.query().unwrap_or_default();
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let (Some(session), Some(signature)) = (param("s"), param("k")) else {
        return Ok(None);
    };
    let Some(session_hash) = unhex(&session) else {
        return Ok(None);
    };
    let Some(info) = state.service.session(&session_hash).await? else {
        return Ok(None);
    };
    let expected = part_signature(&info.token_hash, &session, id, index);
    let valid = unhex(&signature).is_some_and(|given| constant_time_eq(&given, &expected))
        && token_is_valid(state, &info.token_hash).await?;
    Ok(valid.then(|| Viewer {
        csrf: String::new(),
        signed_in: true,
        new_csrf_cookie: false,
        session: None,
    }))
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Viewer {
    /// Checks the CSRF token a form or script sent; a mismatch is a 403 that says what to do.
    pub fn verify(&self, presented: Option<&str>) -> Result<(), PageError> {
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), self.csrf.as_bytes()) => Ok(()),
            _ => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "The form's security token is missing or out of date. Reload the page and try again.",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn random_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn csrf_for_session(secret: &str) -> String {
    let digest = sha256(format!("herald-csrf:{secret}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the dashboard needs a sign-in: the same rule as the API's.
async fn sign_in_required(state: &AppState) -> Result<bool, PageError> {
    Ok(!state.token_hashes.is_empty() || state.any_stored_token().await?)
}

/// Whether `token_hash` is a token the API accepts now.
async fn token_is_valid(state: &AppState, token_hash: &[u8; 32]) -> Result<bool, PageError> {
    Ok(state.token_hashes.contains(token_hash) || state.is_stored_token(token_hash).await?)
}

/// The session secret in the cookie with the session, when it names a live session opened with a
/// still-valid token.
async fn live_session<'a>(
    state: &AppState,
    headers: &'a HeaderMap,
) -> Result<Option<(&'a str, crate::store::SessionInfo)>, PageError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(session) = state.service.session(&sha256(secret.as_bytes())).await? else {
        return Ok(None);
    };
    Ok(token_is_valid(state, &session.token_hash)
        .await?
        .then_some((secret, session)))
}

/// A state-changing request from another site: refused whatever the token says. Browsers send `Origin` on
/// every cross-site POST; a request without it (curl, an old browser) is judged by its CSRF token alone.
fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    origin_host != host
}

/// Middleware on every dashboard route: signs the viewer in (or sends them to `/login`), refuses
/// cross-site writes, and gives handlers a [`Viewer`].
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let writes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if writes && cross_site(request.headers()) {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "This request came from another site and was refused.",
        )
        .into_response();
    }
    let viewer = match identify(&state, request.headers()).await {
        Ok(Some(viewer)) => viewer,
        Ok(None) => {
            match part_grant(&state, &request.method().clone(), &request.uri().clone()).await {
                Ok(Some(viewer)) => viewer,
                Ok(None) => return sign_in_first(&request),
                Err(error) => return error.into_response(),
            }
        }
        Err(error) => return error.into_response(),
    };
    let set_cookie = viewer.new_csrf_cookie.then(|| {
        format!(
            "{CSRF_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            viewer.csrf
        )
    });
    request.extensions_mut().insert(viewer);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Some(value) = set_cookie.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.append(header::SET_COOKIE, value);
    }
    // Pages run only their own script, show only their own and inline images, and are never framed by
    // another site. A message's HTML (`/messages/{id}/html`) sets a stricter policy of its own.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
    }
    response
}

const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The viewer of `request`, or `None` when a sign-in is needed and there is no live session.
async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Option<Viewer>, PageError> {
    if let Some((secret, session)) = live_session(state, headers).await? {
        return Ok(Some(Viewer {
            csrf: csrf_for_session(secret),
            signed_in: true,
            new_csrf_cookie: false,
            session: Some((sha256(secret.as_bytes()), session.token_hash)),
        }));
    }
    if sign_in_required(state).await? {
        return Ok(None);
    }
    Ok(Some(match cookie(headers, CSRF_COOKIE) {
        Some(csrf) if csrf.len() >= 32 => Viewer {
            csrf: csrf.to_owned(),
            signed_in: false,
            new_csrf_cookie: false,
            session: None,
        },
        _ => Viewer {
            csrf: random_secret(),
            signed_in: false,
            new_csrf_cookie: true,
            session: None,
        },
    }))
}

/// A page goes to the sign-in form (and comes back after); anything else gets a plain 401.
fn sign_in_first(request: &Request) -> Response {
    if request.method() == Method::GET && !request.uri().path().starts_with("/events") {
        let next = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let target = format!("/login?next={}", super::urlencode(&next));
        return Redirect::to(&target).into_response();
    }
    PageError::new(
        StatusCode::UNAUTHORIZED,
        "Sign in first: this dashboard needs the API token.",
    )
    .into_response()
}

/// Only paths on this server, so that a crafted link cannot send someone elsewhere after signing in: one `/`
/// then no second `/` or `\` (`//host` and `/\host` are other hosts to a browser), and no control character
/// space or non-ASCII byte anywhere (browsers drop a tab or newline, so `/<TAB>/host` would become `//host`; a
/// control character cannot even be sent in `Location`). Our own links are percent-encoded, so they pass.
/// Anything else goes to `/`.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next[1..].starts_with(['/', '\\'])
                && !next.contains('\\')
                && next.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            next
        }
        _ => "/",
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

pub async fn login_page(
    State(state): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, PageError> {
    if !sign_in_required(&state).await? {
        return Ok(Redirect::to(safe_next(query.next.as_deref())).into_response());
    }
    login_form(StatusCode::OK, query.next.as_deref(), None)
}

fn login_form(
    status: StatusCode,
    next: Option<&str>,
    error: Option<&str>,
) -> Result<Response, PageError> {
    let html = render(
        "login.html",
        minijinja::context! { next => safe_next(next), error => error, page => "login" },
    )?;
    Ok((status, Html(html)).into_response())
}

/// `POST /login`: a valid token opens a session; anything else shows the form again with the reason.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    if cross_site(&headers) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "This request came from another site and was refused.",
        ));
    }
    let client = crate::app::client_key(&extensions);
    if let Some(wait) = state.sign_in_failures.refused_for(client) {
        let seconds = wait.as_secs().max(1);
        let mut response = PageError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong tokens from this address in the last minute; try again in {seconds} s."),
        )
        .into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&seconds.to_string()).expect("digits"),
        );
        return Ok(response);
    }
    let token = form.token.trim();
    if token.is_empty() {
        return login_form(
            StatusCode::UNPROCESSABLE_ENTITY,
            form.next.as_deref(),
            Some("Enter the API token."),
        );
    }
    let token_hash = sha256(token.as_bytes());
    if !token_is_valid(&state, &token_hash).await? {
        state.sign_in_failures.record(client);
        tracing::info!(%client, "dashboard sign-in refused: the token is not valid");
        return login_form(
            StatusCode::UNAUTHORIZED,
            form.next.as_deref(),
            Some("That token is not valid."),
        );
    }
    let secret = random_secret();
    state
        .service
        .open_session(&sha256(secret.as_bytes()), &token_hash, SESSION_TTL)
        .await?;
    // Behind a TLS-terminating proxy the browser speaks HTTPS: then the cookie never travels in clear.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(safe_next(form.next.as_deref())).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie is ASCII"),
    );
    Ok(response)
}

/// A form that carries only the CSRF token (sign out, cancel, resend).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

/// `POST /logout`: forgets the session in the store and in the browser.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Extension(viewer): axum::Extension<Viewer>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        state
            .service
            .close_session(&sha256(secret.as_bytes()))
            .await?;
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("herald_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_signatures_name_one_part_of_one_message_of_one_session() {
        let (session, token) = ([1u8; 32], [2u8; 32]);
        let viewer = Viewer {
            csrf: String::new(),
            signed_in: true,
            new_csrf_cookie: false,
            session: Some((session, token)),
        };
        let query = viewer.part_query("m1", 0);
        let signature = query.split("&k=").nth(1).unwrap();
        assert_eq!(
            unhex(signature),
            Some(part_signature(&token, &hex(&session), "m1", 0))
        );
        assert_ne!(
            part_signature(&token, &hex(&session), "m1", 1),
            part_signature(&token, &hex(&session), "m1", 0)
        );
        assert_ne!(
            part_signature(&token, &hex(&session), "m2", 0),
            part_signature(&token, &hex(&session), "m1", 0)
        );
        assert_ne!(
            part_signature(&[3; 32], &hex(&session), "m1", 0),
            part_signature(&token, &hex(&session), "m1", 0)
        );
        assert_eq!(unhex(&hex(&session)), Some(session));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; herald_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/messages?q=x")), "/messages?q=x");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(safe_next(Some("/\n/evil.example")), "/");
        assert_eq!(safe_next(Some("/ /evil.example")), "/");
        assert_eq!(safe_next(Some("/\u{1}")), "/");
        assert_eq!(safe_next(Some("/\0")), "/");
        assert_eq!(safe_next(Some("/caf\u{e9}")), "/");
        assert_eq!(safe_next(Some("")), "/");
        assert_eq!(safe_next(Some("/")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn cross_site_writes_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8025".parse().unwrap());
        assert!(!cross_site(&headers));
        headers.insert(header::ORIGIN, "http://127.0.0.1:8025".parse().unwrap());
        assert!(!cross_site(&headers));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_site(&headers));
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_compare_exactly() {
        assert_ne!(csrf_for_session("a"), csrf_for_session("b"));
        let viewer = Viewer {
            csrf: csrf_for_session("a"),
            signed_in: true,
            new_csrf_cookie: false,
            session: None,
        };
        assert!(viewer.verify(Some(&csrf_for_session("a"))).is_ok());
        assert!(viewer.verify(Some("nope")).is_err());
        assert!(viewer.verify(None).is_err());
    }
}
