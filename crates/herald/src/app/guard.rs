//! What every HTTP request passes before its handler, API and dashboard alike: the `Host` check and the
//! cross-site check of the open (no-token) mode, and the per-client throttle on wrong tokens.
//!
//! Without any token, anything that can make a request to the loopback port can use Herald. A web page in
//! the operator's browser can too, unless the server refuses what browsers send on a page's behalf: a
//! request whose `Host` is not this server (DNS rebinding: `evil.example` made to resolve to 127.0.0.1) and,
//! on `/v1`, a cross-site request or a body that is not JSON (an HTML form or a `text/plain` fetch, which
//! browsers send cross-site without asking).

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, AppState};

/// The `Host` values this server answers to in the open mode: the loopback names and the listen address,
/// with the listen port, and the host of `HERALD_PUBLIC_URL`.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    /// Lower case `host:port` (and bare `host` where the port is the scheme's default).
    hosts: Vec<String>,
}

impl AllowedHosts {
    pub fn new(listen: SocketAddr, public_url: Option<&url::Url>) -> Self {
        let port = listen.port();
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        if !listen.ip().is_unspecified() {
            names.push(match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        let mut hosts: Vec<String> = names.iter().map(|name| format!("{name}:{port}")).collect();
        if port == 80 {
            hosts.extend(names);
        }
        if let Some(url) = public_url
            && let Some(host) = url.host_str()
        {
            let host = host.to_ascii_lowercase();
            match url.port() {
                Some(port) => hosts.push(format!("{host}:{port}")),
                None => {
                    hosts.push(format!(
                        "{host}:{}",
                        url.port_or_known_default().unwrap_or(80)
                    ));
                    hosts.push(host);
                }
            }
        }
        Self { hosts }
    }

    /// Whether `host` (a `Host` header, or the authority of an `Origin`) names this server.
    pub fn allows(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// Whether the API and the dashboard are open (no `HERALD_API_TOKEN`, no stored token). A store that cannot
/// answer counts as open here: the checks below then apply, which a legitimate request passes anyway.
async fn open_mode(state: &AppState) -> bool {
    state.token_hashes.is_empty() && !state.any_stored_token().await.unwrap_or(false)
}

/// Middleware on every route. In the open mode: a `Host` that is not this server is refused (`421`), and on
/// `/v1` so is a request a browser made for another site (`403`) or a body that is not JSON (`415`).
pub async fn open_mode_guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.hosts.hosts.is_empty() || !open_mode(&state).await {
        return next.run(request).await;
    }
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    if !state.hosts.allows(host) {
        return ApiError {
            field: Some("Host".into()),
            ..ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                format!(
                    "this server does not answer to Host {host:?}: without an API token only its loopback address \
                     (or the host of HERALD_PUBLIC_URL) is accepted"
                ),
            )
        }
        .into_response();
    }
    if request.uri().path().starts_with("/v1/")
        && let Some(refusal) = browser_refusal(
            &state.hosts,
            request.method(),
            headers,
            request.uri().path() == CSV_PATH,
        )
    {
        return refusal.into_response();
    }
    next.run(request).await
}

/// Why a `/v1` request in the open mode looks like another site's page speaking through the visitor's
/// browser, if it does.
fn browser_refusal(
    hosts: &AllowedHosts,
    method: &Method,
    headers: &HeaderMap,
    csv_allowed: bool,
) -> Option<ApiError> {
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let cross_site = |field: &str, value: &str| ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "refused: a browser sent this request for another site ({field}: {value}); without an API token \
                 the API takes requests from this machine's programs only"
            ),
        )
    };
    if let Some(site) = header_text("sec-fetch-site")
        && matches!(site, "cross-site" | "same-site")
    {
        return Some(cross_site("Sec-Fetch-Site", site));
    }
    if let Some(origin) = header_text(header::ORIGIN.as_str()) {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !hosts.allows(authority) {
            return Some(cross_site("Origin", origin));
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let content_type = header_text(header::CONTENT_TYPE.as_str());
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || header_text(header::CONTENT_LENGTH.as_str()).is_some_and(|n| n.trim() != "0");
    let csv = csv_allowed && content_type.is_some_and(is_csv);
    if (has_body || content_type.is_some()) && !content_type.is_some_and(is_json) && !csv {
        return Some(ApiError {
            field: Some("Content-Type".into()),
            ..ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "a request body must be sent as `Content-Type: application/json` (got {})",
                    content_type.map_or_else(|| "none".to_owned(), |t| format!("{t:?}"))
                ),
            )
        });
    }
    None
}

/// The one `/v1` route that takes another body than JSON: the suppression list's CSV import (issue 12).
const CSV_PATH: &str = "/v1/suppressions/import";

/// `text/csv`, with or without parameters. Like JSON and unlike `text/plain`, it is not a type a page may
/// send to another site without the CORS preflight Herald never grants, so it keeps the guard's promise.
fn is_csv(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/csv"))
}

/// `application/json`, `application/problem+json`, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The client a throttle counts against: its IP address, or its /64 for IPv6 (one host holds a whole /64, so
/// counting single addresses would let it try forever). Behind a reverse proxy every client is the proxy.
pub fn client_key(request_extensions: &axum::http::Extensions) -> IpAddr {
    let ip = request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
        v4 => v4,
    }
}

/// Wrong tokens per client in a sliding window: past `max` failures a client is refused until its oldest
/// failure leaves the window, whoever else is failing. The map holds at most [`Self::MAX_CLIENTS`] clients, so
/// it cannot be grown without bound by many addresses.
pub struct FailureThrottle {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureThrottle {
    const MAX_CLIENTS: usize = 4096;

    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn record(&self, client: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("not poisoned");
        if failures.len() >= Self::MAX_CLIENTS && !failures.contains_key(&client) {
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|last| now.duration_since(*last) < self.window)
            });
            if failures.len() >= Self::MAX_CLIENTS {
                // Forget the client whose last failure is oldest: the one least likely to be guessing now.
                if let Some(stalest) = failures
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(ip, _)| *ip)
                {
                    failures.remove(&stalest);
                }
            }
        }
        let times = failures.entry(client).or_default();
        while times
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        // More than `max` need not be kept: the wait is measured from the oldest of the last `max`.
        while times.len() > self.max {
            times.pop_front();
        }
    }

    /// How long `client` stays refused, if it is.
    pub fn refused_for(&self, client: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().expect("not poisoned");
        let times = failures.get(&client)?;
        let recent = times.iter().filter(|at| at.elapsed() < self.window).count();
        (recent >= self.max).then(|| {
            let oldest = times[times.len() - recent];
            self.window
                .saturating_sub(oldest.elapsed())
                .max(Duration::from_secs(1))
        })
    }
}

/// `429` with `Retry-After` for a client past its wrong-token limit.
pub fn too_many_failures(wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        format!("too many wrong tokens from this address; retry in {seconds} s"),
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_the_port_and_the_public_host_are_allowed() {
        let public = url::Url::parse("https://herald.example.com/").unwrap();
        let hosts = AllowedHosts::new("127.0.0.1:8025".parse().unwrap(), Some(&public));
        for host in [
            "127.0.0.1:8025",
            "localhost:8025",
            "LOCALHOST:8025",
            "[::1]:8025",
            "herald.example.com",
            "herald.example.com:443",
        ] {
            assert!(hosts.allows(host), "{host}");
        }
        for host in [
            "127.0.0.1",
            "127.0.0.1:8026",
            "evil.example:8025",
            "localhost.evil.example:8025",
            "",
        ] {
            assert!(!hosts.allows(host), "{host}");
        }
    }

    #[test]
    fn browsers_speaking_for_another_site_are_refused() {
        let hosts = AllowedHosts::new("127.0.0.1:8025".parse().unwrap(), None);
        let post = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            browser_refusal(&hosts, &Method::POST, &headers, false).map(|e| (e.status, e.field))
        };
        let json = ("content-type", "application/json");
        let body = ("content-length", "10");
        assert_eq!(post(&[json, body]), None);
        assert_eq!(post(&[]), None, "no body (cancel)");
        assert_eq!(
            post(&[("content-type", "text/plain"), body]),
            Some((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("Content-Type".into())
            ))
        );
        assert_eq!(
            post(&[body]),
            Some((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("Content-Type".into())
            ))
        );
        assert_eq!(
            post(&[json, body, ("origin", "https://evil.example")]),
            Some((StatusCode::FORBIDDEN, Some("Origin".into())))
        );
        assert_eq!(
            post(&[json, body, ("origin", "http://localhost:8025")]),
            None
        );
        assert_eq!(
            post(&[json, body, ("sec-fetch-site", "cross-site")]),
            Some((StatusCode::FORBIDDEN, Some("Sec-Fetch-Site".into())))
        );
        assert!(is_json("application/json; charset=utf-8"));
        assert!(!is_json("text/plain"));
    }

    #[test]
    fn one_client_failing_does_not_refuse_another() {
        let throttle = FailureThrottle::new(3, Duration::from_secs(60));
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let admin: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..2 {
            throttle.record(attacker);
        }
        assert!(throttle.refused_for(attacker).is_none());
        throttle.record(attacker);
        let wait = throttle
            .refused_for(attacker)
            .expect("refused after the limit");
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(throttle.refused_for(admin).is_none());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let mut extensions = axum::http::Extensions::new();
        extensions.insert(ConnectInfo::<SocketAddr>(
            "[2001:db8:1:2:3:4:5:6]:1".parse().unwrap(),
        ));
        assert_eq!(
            client_key(&extensions),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
