//! Configuration of `herald serve`: environment variables, optionally a TOML file with the same keys
//! (environment wins). Every value is checked at start, with an error that names the key.

use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

use crate::queue::{
    RetryPolicy,
    retry::{DEFAULT_MAX_AGE, DEFAULT_SCHEDULE, parse_duration},
};

/// The keys, as environment variables and as TOML keys (lower case, without the `HERALD_` prefix).
pub const KEYS: &[(&str, &str)] = &[
    (
        "HERALD_LISTEN",
        "HTTP listen address (default 127.0.0.1:8025)",
    ),
    (
        "HERALD_DATABASE_URL",
        "sqlite://PATH (default sqlite://./herald-data/herald.db) or postgres://user@host:port/db",
    ),
    (
        "HERALD_RELAY_URL",
        "smtp://[user:pass@]host:port[?tls=..&pool=..&ca=..&timeout_s=..] or smtps://…; unset: capture inbox",
    ),
    (
        "HERALD_RELAY_PASSWORD",
        "relay password, instead of putting it in the URL",
    ),
    (
        "HERALD_RELAY_URL_<NAME>",
        "another relay, named NAME (same URL form; limits per relay, totals split across live nodes: pool=N connections, rate=N msg/s, burst=N, domain_concurrency=N sessions per recipient domain, batch=N messages pipelined per session)",
    ),
    (
        "HERALD_RELAY_DOMAINS_<NAME>",
        "sender domains sent through relay NAME, comma-separated (example.com, *.example.com); other senders use the default relay",
    ),
    (
        "HERALD_RELAY_PASSWORD_<NAME>",
        "relay NAME's password, instead of putting it in its URL",
    ),
    (
        "HERALD_RELAY_DEFAULT",
        "the named relay that takes mail from all other sender domains when HERALD_RELAY_URL is unset",
    ),
    ("HERALD_API_TOKEN", "bearer token required on /v1/*"),
    ("HERALD_FROM", "default sender when a request has none"),
    (
        "HERALD_SECRET_KEY",
        "seals private DKIM keys in the store (herald dkim; at least 16 characters; keep it outside the database)",
    ),
    (
        "HERALD_MESSAGE_ID_DOMAIN",
        "domain of generated Message-IDs (default: the sender's)",
    ),
    (
        "HERALD_RETRY",
        "retry schedule (default 30s,1m,5m,15m,1h,4h; the last repeats)",
    ),
    (
        "HERALD_MAX_AGE",
        "give up on a message after this age (default 3d)",
    ),
    (
        "HERALD_RETENTION",
        "prune raw bodies of finished messages after this age (default 30d; 0 keeps them)",
    ),
    (
        "HERALD_BODY_LIMIT",
        "largest request body in bytes (default 26214400 = 25 MB)",
    ),
    (
        "HERALD_REQUEST_BUDGET",
        "most bytes one request may store, all its messages rendered and composed (default 268435456 = 256 MiB)",
    ),
    (
        "HERALD_CONCURRENCY",
        "messages claimed and in flight at once, across relays (default 256; bounds memory)",
    ),
    (
        "HERALD_LEASE",
        "how long a claimed message stays with a node that stops renewing it (renewed every third; default 30s, at least 3s)",
    ),
    (
        "HERALD_PUBLIC_URL",
        "the URL browsers use to reach Herald (e.g. https://herald.example.com); its host is accepted in Host; unsubscribe links point to it (required by \"unsubscribe\")",
    ),
    (
        "HERALD_METRICS_TOKEN",
        "bearer token required on /metrics (default: /metrics is open)",
    ),
    (
        "HERALD_HTTP_HEADER_TIMEOUT",
        "time a client has to send a request's headers, and the longest idle keep-alive (default 10s)",
    ),
    (
        "HERALD_HTTP_BODY_TIMEOUT",
        "time a client has to send a whole request body (default 60s)",
    ),
    (
        "HERALD_HTTP_MAX_CONNECTIONS",
        "open HTTP connections at once; more get 503 (default 1024, or half the open-file limit if lower)",
    ),
    (
        "HERALD_HTTP_SHUTDOWN_GRACE",
        "on shutdown, how long requests still in flight may take before their connections are closed (default 10s)",
    ),
    // Webhooks (issue 12; src/events).
    (
        "HERALD_WEBHOOK_ALLOW_PRIVATE",
        "1: webhook endpoints may be on loopback, private and link-local addresses (default 0: refused, at creation and at each connection)",
    ),
    (
        "HERALD_WEBHOOK_TIMEOUT",
        "time one webhook request may take, connection included (default 10s)",
    ),
    (
        "HERALD_WEBHOOK_CONCURRENCY",
        "webhook requests in flight to one endpoint from one node (default 16)",
    ),
    (
        "HERALD_WEBHOOK_RETRY",
        "webhook retry schedule (default 5s,30s,2m,10m,1h,6h; the last repeats)",
    ),
    (
        "HERALD_WEBHOOK_MAX_AGE",
        "give up on a webhook delivery this long after its event (default 3d)",
    ),
    (
        "HERALD_WEBHOOK_DISABLE_AFTER",
        "disable a webhook endpoint whose every delivery failed for this long (default 3d)",
    ),
    // SMTP submission (src/submission/settings.rs reads them).
    (
        "HERALD_SMTP_LISTEN",
        "SMTP submission listen address, e.g. 127.0.0.1:2525 or 0.0.0.0:587 (unset: no SMTP listener)",
    ),
    (
        "HERALD_SMTPS_LISTEN",
        "SMTP submission with implicit TLS (RFC 8314), e.g. 0.0.0.0:465; needs HERALD_SMTP_TLS_CERT/_KEY",
    ),
    (
        "HERALD_SMTP_TLS_CERT",
        "PEM certificate chain for STARTTLS and the implicit-TLS port",
    ),
    (
        "HERALD_SMTP_TLS_KEY",
        "PEM private key of HERALD_SMTP_TLS_CERT",
    ),
    (
        "HERALD_SMTP_HOSTNAME",
        "the name in the SMTP greeting and EHLO reply, and Message-IDs' fallback domain (default: the host name)",
    ),
    (
        "HERALD_SMTP_MAX_SESSIONS",
        "SMTP sessions open at once, both ports together; more get 421 4.3.2 (default 1024, or half the open-file limit if lower)",
    ),
    (
        "HERALD_SMTP_COMMAND_TIMEOUT",
        "time a client has to send its next command (RFC 5321 §4.5.3.2; default 5m)",
    ),
    (
        "HERALD_SMTP_DATA_TIMEOUT",
        "time a client has to send a whole message after DATA or between BDAT chunks (default 10m)",
    ),
    (
        "HERALD_SMTP_MAX_ERRORS",
        "refused commands a session may make before it is closed with 421 (default 10)",
    ),
    // Bounces and complaints in (issue 12; src/bounce/intake.rs).
    (
        "HERALD_BOUNCE_DOMAIN",
        "VERP: envelope sender bounces+TOKEN@DOMAIN; the SMTP listener takes DSNs, complaints and unsub+TOKEN@ mail for DOMAIN without AUTH; List-Unsubscribe also offers mailto:unsub+TOKEN@DOMAIN (unset: off)",
    ),
    (
        "HERALD_BOUNCE_MAX_SIZE",
        "bytes of one received bounce or complaint that are kept and read (default 1048576)",
    ),
    (
        "HERALD_BOUNCE_RATE",
        "bounces and complaints one client address may hand over per minute; more get 451 (default 600)",
    ),
];

/// Defaults of the HTTP server's limits (`HERALD_HTTP_*`), as the README states them.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the HTTP server protects itself from slow or numerous clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// From the first byte of a request (or the end of the previous response) to the end of its headers.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body.
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: default_max_connections(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// [`DEFAULT_MAX_CONNECTIONS`], or half the process's open-file limit when that is lower: the other half is
/// left to the store, the relays and the listener, so that idle clients can never starve them of descriptors.
pub fn default_max_connections() -> usize {
    open_file_limit().map_or(DEFAULT_MAX_CONNECTIONS, |limit| {
        DEFAULT_MAX_CONNECTIONS.min((limit / 2).max(16))
    })
}

/// The soft `RLIMIT_NOFILE`, read from `/proc` (Linux); `None` elsewhere or when unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Shortest `HERALD_LEASE`: renewals run every third of it, and a renewal is one commit.
const MIN_LEASE: Duration = Duration::from_secs(3);

/// `HERALD_LEASE`, default [`crate::delivery::DEFAULT_LEASE`].
fn parse_lease(text: Option<&str>) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(crate::delivery::DEFAULT_LEASE);
    };
    let lease = parse_duration(text)?;
    if lease < MIN_LEASE {
        return Err(format!(
            "{text}: at least {}s (leases are renewed every third of it)",
            MIN_LEASE.as_secs()
        ));
    }
    Ok(lease)
}

/// Default of `HERALD_CONCURRENCY`: enough claimed messages to keep 8 pipelined sessions fed between claims
/// (measured: 256 delivered the standard notification ~15% faster end to end than 64), a few tens of MB.
pub const DEFAULT_CONCURRENCY: usize = crate::delivery::DEFAULT_CONCURRENCY;

/// Prefixes of the per-relay keys (the rest of the key is the relay's name).
const RELAY_URL_PREFIX: &str = "HERALD_RELAY_URL_";
const RELAY_DOMAINS_PREFIX: &str = "HERALD_RELAY_DOMAINS_";
const RELAY_PASSWORD_PREFIX: &str = "HERALD_RELAY_PASSWORD_";

/// A relay besides the default one, used for mail from its sender domains.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedRelay {
    /// Lower case, from the key (`HERALD_RELAY_URL_TRANSACTIONAL` → `transactional`).
    pub name: String,
    pub url: String,
    pub password: Option<String>,
    /// Sender domains (`example.com`, `*.example.com`), lower case.
    pub domains: Vec<String>,
}

impl std::fmt::Debug for NamedRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedRelay")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("domains", &self.domains)
            .finish()
    }
}

/// Everything `herald serve` needs to start.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    /// The default relay; with no relay at all, mail goes to the capture inbox.
    pub relay_url: Option<String>,
    pub relay_password: Option<String>,
    /// Relays chosen by sender domain, sorted by name.
    pub relays: Vec<NamedRelay>,
    /// With `relay_url` unset: the named relay that is the default.
    pub relay_default: Option<String>,
    pub api_token: Option<String>,
    pub default_from: Option<String>,
    pub message_id_domain: Option<String>,
    /// `HERALD_SECRET_KEY`: seals private DKIM keys at rest (issue 13).
    pub secret_key: Option<String>,
    pub retry: RetryPolicy,
    pub retention: Option<Duration>,
    pub body_limit: usize,
    /// Most bytes one request (a message or a whole batch) may store, rendered output included.
    pub request_budget: usize,
    pub concurrency: usize,
    pub lease: Duration,
    /// `HERALD_PUBLIC_URL`: its host (with port) is accepted in `Host` besides the listen address.
    pub public_url: Option<url::Url>,
    pub metrics_token: Option<String>,
    pub http: HttpLimits,
    /// `HERALD_SMTP_*`: the SMTP submission listener (off unless a listen address is set).
    pub smtp: crate::submission::Settings,
    /// `HERALD_BOUNCE_*`: VERP return paths and the bounce intake (issue 12); off without a domain.
    pub bounce: Option<crate::bounce::IntakeSettings>,
    /// `HERALD_WEBHOOK_*` (issue 12).
    pub webhooks: crate::events::Settings,
}

impl std::fmt::Debug for Config {
    // Secrets never reach a log line, even through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("relay_url", &self.relay_url.as_deref().map(redact_url))
            .field(
                "relay_password",
                &self.relay_password.as_ref().map(|_| "***"),
            )
            .field("relays", &self.relays)
            .field("relay_default", &self.relay_default)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("default_from", &self.default_from)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field("retry", &self.retry)
            .field("retention", &self.retention)
            .field("body_limit", &self.body_limit)
            .field("request_budget", &self.request_budget)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field(
                "public_url",
                &self.public_url.as_ref().map(url::Url::as_str),
            )
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "***"))
            .field("http", &self.http)
            .field("smtp", &self.smtp)
            .field("bounce", &self.bounce)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

/// A URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    /// The key that seals private DKIM keys, from `HERALD_SECRET_KEY` (issue 13).
    pub fn dkim_secret(&self) -> Result<Option<crate::dkim::SecretKey>, crate::dkim::DkimError> {
        self.secret_key
            .as_deref()
            .map(crate::dkim::SecretKey::from_secret)
            .transpose()
    }

    /// Reads the environment and, if given, the TOML file (its keys are the variable names in lower case
    /// without `HERALD_`, e.g. `listen = "0.0.0.0:8025"`; the environment overrides it).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut values: HashMap<String, String> = HashMap::new();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: shown.clone(),
                        message: e.to_string(),
                    })?;
            for (key, value) in table {
                if key == "relays" {
                    relays_from_toml(value, &mut values).map_err(|message| ConfigError::File {
                        path: shown.clone(),
                        message,
                    })?;
                    continue;
                }
                let env_key = format!("HERALD_{}", key.to_ascii_uppercase());
                if !KEYS.iter().any(|(k, _)| *k == env_key) {
                    return Err(ConfigError::File {
                        path: shown,
                        message: format!("unknown key {key:?}"),
                    });
                }
                let value = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    other => {
                        return Err(ConfigError::File {
                            path: shown,
                            message: format!(
                                "{key}: expected a string or an integer, found {}",
                                other.type_str()
                            ),
                        });
                    }
                };
                values.insert(env_key, value);
            }
        }
        for (key, _) in KEYS {
            if let Ok(value) = std::env::var(key) {
                values.insert((*key).to_owned(), value);
            }
        }
        for (key, value) in std::env::vars() {
            if is_relay_key(&key) {
                values.insert(key, value);
            }
        }
        Self::from_values(&values)
    }

    /// Builds a config from key → value pairs (as `load` gathers them); missing keys take their defaults.
    pub fn from_values(values: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let listen = get("HERALD_LISTEN")
            .unwrap_or("127.0.0.1:8025")
            .parse()
            .map_err(|e| {
                invalid(
                    "HERALD_LISTEN",
                    format!("not an address like 127.0.0.1:8025: {e}"),
                )
            })?;
        let retry = RetryPolicy::parse(
            get("HERALD_RETRY").unwrap_or(DEFAULT_SCHEDULE),
            get("HERALD_MAX_AGE").unwrap_or(DEFAULT_MAX_AGE),
        )
        .map_err(|e| {
            invalid(
                if e.starts_with("HERALD_MAX_AGE") {
                    "HERALD_MAX_AGE"
                } else {
                    "HERALD_RETRY"
                },
                e,
            )
        })?;
        let retention = match get("HERALD_RETENTION").unwrap_or("30d") {
            "0" => None,
            text => Some(parse_duration(text).map_err(|e| invalid("HERALD_RETENTION", e))?),
        };
        let number = |key: &str, default: usize| positive_number(key, get(key), default);
        let duration = |key: &str, default: Duration| positive_duration(key, get(key), default);
        let http = HttpLimits {
            header_timeout: duration("HERALD_HTTP_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT)?,
            body_timeout: duration("HERALD_HTTP_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT)?,
            max_connections: number("HERALD_HTTP_MAX_CONNECTIONS", default_max_connections())?,
            shutdown_grace: duration("HERALD_HTTP_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE)?,
        };
        let public_url = get("HERALD_PUBLIC_URL")
            .map(|text| match url::Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                    Ok(url)
                }
                _ => Err(invalid(
                    "HERALD_PUBLIC_URL",
                    format!("{text:?} is not an http(s) URL like https://herald.example.com"),
                )),
            })
            .transpose()?;
        let relay_url = get("HERALD_RELAY_URL").map(str::to_owned);
        let relay_default = get("HERALD_RELAY_DEFAULT").map(str::to_ascii_lowercase);
        let relays = named_relays(values)?;
        if relay_url.is_some() && relay_default.is_some() {
            return Err(invalid(
                "HERALD_RELAY_DEFAULT",
                "HERALD_RELAY_URL is the default relay already; set one of the two".into(),
            ));
        }
        if let Some(name) = &relay_default
            && !relays.iter().any(|relay| relay.name == *name)
        {
            return Err(invalid(
                "HERALD_RELAY_DEFAULT",
                format!(
                    "no relay named {name:?} (set HERALD_RELAY_URL_{})",
                    name.to_ascii_uppercase()
                ),
            ));
        }
        if !relays.is_empty() && relay_url.is_none() && relay_default.is_none() {
            return Err(invalid(
                "HERALD_RELAY_URL",
                "named relays need a default relay for all other senders: set HERALD_RELAY_URL, or HERALD_RELAY_DEFAULT to one of the names".into(),
            ));
        }
        for relay in &relays {
            if relay.domains.is_empty() && relay_default.as_deref() != Some(relay.name.as_str()) {
                return Err(invalid(
                    &format!("{RELAY_DOMAINS_PREFIX}{}", relay.name.to_ascii_uppercase()),
                    format!(
                        "relay {:?} has no sender domains and is not the default, so no mail would use it",
                        relay.name
                    ),
                ));
            }
        }
        Ok(Config {
            listen,
            database_url: get("HERALD_DATABASE_URL")
                .unwrap_or("sqlite://./herald-data/herald.db")
                .to_owned(),
            relay_url,
            relay_password: get("HERALD_RELAY_PASSWORD").map(str::to_owned),
            relays,
            relay_default,
            api_token: get("HERALD_API_TOKEN").map(str::to_owned),
            default_from: get("HERALD_FROM").map(str::to_owned),
            message_id_domain: get("HERALD_MESSAGE_ID_DOMAIN").map(str::to_owned),
            secret_key: get("HERALD_SECRET_KEY").map(str::to_owned),
            retry,
            retention,
            body_limit: number("HERALD_BODY_LIMIT", 25 * 1024 * 1024)?,
            request_budget: number(
                "HERALD_REQUEST_BUDGET",
                crate::service::DEFAULT_REQUEST_BYTES,
            )?,
            concurrency: number("HERALD_CONCURRENCY", DEFAULT_CONCURRENCY)?,
            lease: parse_lease(get("HERALD_LEASE")).map_err(|e| invalid("HERALD_LEASE", e))?,
            public_url,
            metrics_token: get("HERALD_METRICS_TOKEN").map(str::to_owned),
            http,
            smtp: crate::submission::Settings::from_values(get)?,
            bounce: crate::bounce::IntakeSettings::from_values(get)?,
            webhooks: webhook_settings(get)?,
        })
    }

    /// Refuses a configuration that would expose an unauthenticated API beyond this machine.
    /// `stored_tokens`: whether `herald token create` made tokens (they require authentication too).
    pub fn check_exposure(&self, stored_tokens: bool) -> Result<(), ConfigError> {
        if self.api_token.is_none() && !stored_tokens && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "HERALD_API_TOKEN".into(),
                message: format!(
                    "not set, and HERALD_LISTEN={} is not a loopback address: refusing to serve an API without \
                     authentication to the network (set HERALD_API_TOKEN, create a token with `herald token create NAME`, \
                     or listen on 127.0.0.1)",
                    self.listen
                ),
            });
        }
        Ok(())
    }
}

/// The `HERALD_WEBHOOK_*` settings.
fn webhook_settings<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<crate::events::Settings, ConfigError> {
    use crate::events::{self, Settings};
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    };
    let allow_private = match get("HERALD_WEBHOOK_ALLOW_PRIVATE") {
        None | Some("0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(other) => {
            return Err(invalid(
                "HERALD_WEBHOOK_ALLOW_PRIVATE",
                format!("{other:?}: expected 1 or 0"),
            ));
        }
    };
    let timeout = positive_duration(
        "HERALD_WEBHOOK_TIMEOUT",
        get("HERALD_WEBHOOK_TIMEOUT"),
        events::DEFAULT_TIMEOUT,
    )?;
    let retry = events::retry_policy(
        get("HERALD_WEBHOOK_RETRY").unwrap_or(events::DEFAULT_RETRY),
        get("HERALD_WEBHOOK_MAX_AGE").unwrap_or(events::DEFAULT_MAX_AGE),
    )
    .map_err(|e| {
        let key = if e.starts_with("HERALD_WEBHOOK_MAX_AGE") {
            "HERALD_WEBHOOK_MAX_AGE"
        } else {
            "HERALD_WEBHOOK_RETRY"
        };
        invalid(key, e)
    })?;
    Ok(Settings {
        allow_private,
        timeout,
        concurrency: positive_number(
            "HERALD_WEBHOOK_CONCURRENCY",
            get("HERALD_WEBHOOK_CONCURRENCY"),
            events::DEFAULT_CONCURRENCY,
        )?,
        disable_after: positive_duration(
            "HERALD_WEBHOOK_DISABLE_AFTER",
            get("HERALD_WEBHOOK_DISABLE_AFTER"),
            events::DEFAULT_DISABLE_AFTER,
        )?,
        retry,
        lease: Settings::lease_for(timeout),
        ..Settings::default()
    })
}

fn is_relay_key(key: &str) -> bool {
    [
        RELAY_URL_PREFIX,
        RELAY_DOMAINS_PREFIX,
        RELAY_PASSWORD_PREFIX,
    ]
    .iter()
    .any(|prefix| key.len() > prefix.len() && key.starts_with(prefix))
}

/// The relays named by `HERALD_RELAY_URL_<NAME>` / `_DOMAINS_<NAME>` / `_PASSWORD_<NAME>` keys.
fn named_relays(values: &HashMap<String, String>) -> Result<Vec<NamedRelay>, ConfigError> {
    let mut relays: std::collections::BTreeMap<String, NamedRelay> = Default::default();
    for (key, value) in values {
        let value = value.trim();
        let (prefix, name) = match [
            RELAY_URL_PREFIX,
            RELAY_DOMAINS_PREFIX,
            RELAY_PASSWORD_PREFIX,
        ]
        .into_iter()
        .find_map(|prefix| Some((prefix, key.strip_prefix(prefix)?)))
        {
            Some((prefix, name)) if !name.is_empty() => (prefix, name),
            _ => continue,
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConfigError::Invalid {
                key: key.clone(),
                message: "a relay name is made of A-Z, 0-9 and _".into(),
            });
        }
        let entry = relays
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| NamedRelay {
                name: name.to_ascii_lowercase(),
                url: String::new(),
                password: None,
                domains: Vec::new(),
            });
        match prefix {
            RELAY_URL_PREFIX => entry.url = value.to_owned(),
            RELAY_PASSWORD_PREFIX => {
                entry.password = Some(value.to_owned()).filter(|p| !p.is_empty())
            }
            _ => {
                entry.domains = value
                    .split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect();
            }
        }
    }
    let relays: Vec<NamedRelay> = relays.into_values().collect();
    if let Some(relay) = relays.iter().find(|relay| relay.url.is_empty()) {
        return Err(ConfigError::Invalid {
            key: format!("{RELAY_URL_PREFIX}{}", relay.name.to_ascii_uppercase()),
            message: format!("relay {:?} is configured but has no URL", relay.name),
        });
    }
    Ok(relays)
}

/// `[relays.NAME]` tables of a config file (`url`, `domains` as an array or a comma-separated string,
/// `password`) as the equivalent environment keys.
fn relays_from_toml(
    value: toml::Value,
    values: &mut HashMap<String, String>,
) -> Result<(), String> {
    let toml::Value::Table(relays) = value else {
        return Err("relays: expected tables like [relays.NAME] with url and domains".into());
    };
    for (name, relay) in relays {
        let upper = name.to_ascii_uppercase();
        let toml::Value::Table(relay) = relay else {
            return Err(format!(
                "relays.{name}: expected a table with url and domains"
            ));
        };
        for (key, value) in relay {
            let prefix = match key.as_str() {
                "url" => RELAY_URL_PREFIX,
                "domains" => RELAY_DOMAINS_PREFIX,
                "password" => RELAY_PASSWORD_PREFIX,
                other => {
                    return Err(format!(
                        "relays.{name}: unknown key {other:?} (known: url, domains, password)"
                    ));
                }
            };
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s),
                        other => Err(format!(
                            "relays.{name}.{key}: expected strings, found {}",
                            other.type_str()
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
                other => {
                    return Err(format!(
                        "relays.{name}.{key}: expected a string, found {}",
                        other.type_str()
                    ));
                }
            };
            values.insert(format!("{prefix}{upper}"), text);
        }
    }
    Ok(())
}

/// A setting that must be a whole number above 0; `default` when unset.
pub(crate) fn positive_number(
    key: &str,
    value: Option<&str>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: format!("{text:?} is not a positive whole number"),
            }),
        },
    }
}

/// A setting that must be a duration (`30s`, `5m`) longer than 0; `default` when unset.
pub(crate) fn positive_duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    };
    match value {
        None => Ok(default),
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(invalid("must be longer than 0".into())),
            Err(e) => Err(invalid(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_values(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn webhook_settings_default_and_name_their_key() {
        let c = config(&[]).unwrap();
        assert!(!c.webhooks.allow_private);
        assert_eq!(c.webhooks.timeout, Duration::from_secs(10));
        assert_eq!(c.webhooks.concurrency, 16);
        assert_eq!(c.webhooks.disable_after, Duration::from_secs(3 * 24 * 3600));
        assert_eq!(
            c.webhooks.retry.schedule[..2],
            [Duration::from_secs(5), Duration::from_secs(30)]
        );
        assert_eq!(c.webhooks.retry.max_age, Duration::from_secs(3 * 24 * 3600));
        assert!(c.webhooks.lease >= c.webhooks.timeout * 3);
        let c = config(&[
            ("HERALD_WEBHOOK_ALLOW_PRIVATE", "1"),
            ("HERALD_WEBHOOK_TIMEOUT", "2s"),
        ])
        .unwrap();
        assert!(c.webhooks.allow_private);
        assert_eq!(c.webhooks.lease, Duration::from_secs(30));
        for (key, value) in [
            ("HERALD_WEBHOOK_ALLOW_PRIVATE", "maybe"),
            ("HERALD_WEBHOOK_TIMEOUT", "0"),
            ("HERALD_WEBHOOK_CONCURRENCY", "none"),
            ("HERALD_WEBHOOK_RETRY", "5s,soon"),
            ("HERALD_WEBHOOK_MAX_AGE", "forever"),
            ("HERALD_WEBHOOK_DISABLE_AFTER", "-1"),
        ] {
            let error = config(&[(key, value)]).unwrap_err().to_string();
            assert!(error.starts_with(key), "{key}: {error}");
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8025");
        assert_eq!(c.database_url, "sqlite://./herald-data/herald.db");
        assert!(c.relay_url.is_none());
        assert_eq!(c.body_limit, 25 * 1024 * 1024);
        assert_eq!(c.request_budget, 256 * 1024 * 1024);
        assert_eq!(c.retry, RetryPolicy::default());
        assert_eq!(c.lease, Duration::from_secs(30));
        let short = config(&[("HERALD_LEASE", "1s")]).unwrap_err().to_string();
        assert!(
            short.contains("HERALD_LEASE") && short.contains("at least 3s"),
            "{short}"
        );
        c.check_exposure(false).unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(
            config(&[("HERALD_LISTEN", "nowhere")])
                .unwrap_err()
                .to_string()
                .starts_with("HERALD_LISTEN")
        );
        assert!(
            config(&[("HERALD_MAX_AGE", "soon")])
                .unwrap_err()
                .to_string()
                .starts_with("HERALD_MAX_AGE")
        );
        assert!(
            config(&[("HERALD_BODY_LIMIT", "-1")])
                .unwrap_err()
                .to_string()
                .starts_with("HERALD_BODY_LIMIT")
        );
        for (key, value) in [
            ("HERALD_PUBLIC_URL", "herald.example.com"),
            ("HERALD_PUBLIC_URL", "ftp://herald.example.com"),
            ("HERALD_HTTP_HEADER_TIMEOUT", "0"),
            ("HERALD_HTTP_BODY_TIMEOUT", "soon"),
            ("HERALD_HTTP_MAX_CONNECTIONS", "0"),
            ("HERALD_HTTP_SHUTDOWN_GRACE", "1y"),
        ] {
            let error = config(&[(key, value)]).unwrap_err().to_string();
            assert!(error.starts_with(key), "{key}={value}: {error}");
        }
    }

    #[test]
    fn http_limits_and_the_public_url_are_read() {
        let config = config(&[
            ("HERALD_PUBLIC_URL", "https://herald.example.com:8443/"),
            ("HERALD_METRICS_TOKEN", "m"),
            ("HERALD_HTTP_HEADER_TIMEOUT", "500ms"),
            ("HERALD_HTTP_BODY_TIMEOUT", "2s"),
            ("HERALD_HTTP_MAX_CONNECTIONS", "7"),
            ("HERALD_HTTP_SHUTDOWN_GRACE", "3s"),
        ])
        .unwrap();
        assert_eq!(
            config.http,
            HttpLimits {
                header_timeout: Duration::from_millis(500),
                body_timeout: Duration::from_secs(2),
                max_connections: 7,
                shutdown_grace: Duration::from_secs(3),
            }
        );
        assert_eq!(config.public_url.as_ref().unwrap().port(), Some(8443));
        assert_eq!(config.metrics_token.as_deref(), Some("m"));
        assert!(
            !format!("{config:?}").contains("\"m\""),
            "the metrics token is not in Debug"
        );
    }

    #[test]
    fn an_open_listener_needs_a_token() {
        let open = config(&[("HERALD_LISTEN", "0.0.0.0:8025")]).unwrap();
        assert!(
            open.check_exposure(false)
                .unwrap_err()
                .to_string()
                .contains("HERALD_API_TOKEN")
        );
        let guarded = config(&[
            ("HERALD_LISTEN", "0.0.0.0:8025"),
            ("HERALD_API_TOKEN", "s3cret"),
        ])
        .unwrap();
        guarded.check_exposure(false).unwrap();
        open.check_exposure(true).unwrap();
        assert!(
            !format!("{guarded:?}").contains("s3cret"),
            "Debug never shows the token"
        );
    }

    #[test]
    fn named_relays_by_sender_domain() {
        let c = config(&[
            ("HERALD_RELAY_URL", "smtp://default.example?pool=8"),
            (
                "HERALD_RELAY_URL_SHOP",
                "smtp://u@shop-relay.example?rate=20",
            ),
            ("HERALD_RELAY_PASSWORD_SHOP", "p4ss"),
            ("HERALD_RELAY_DOMAINS_SHOP", "Shop.Example, *.shop.example"),
        ])
        .unwrap();
        assert_eq!(
            c.relays,
            vec![NamedRelay {
                name: "shop".into(),
                url: "smtp://u@shop-relay.example?rate=20".into(),
                password: Some("p4ss".into()),
                domains: vec!["shop.example".into(), "*.shop.example".into()],
            }]
        );
        assert!(!format!("{c:?}").contains("p4ss"));
        // A named relay as the default instead of HERALD_RELAY_URL.
        let c = config(&[
            ("HERALD_RELAY_URL_MAIN", "smtp://main.example"),
            ("HERALD_RELAY_DEFAULT", "MAIN"),
        ])
        .unwrap();
        assert_eq!(c.relay_default.as_deref(), Some("main"));
        assert!(c.relay_url.is_none());
    }

    #[test]
    fn relay_mistakes_name_their_key() {
        let error = |pairs: &[(&str, &str)]| config(pairs).unwrap_err().to_string();
        let e = error(&[
            ("HERALD_RELAY_URL_SHOP", "smtp://s"),
            ("HERALD_RELAY_DOMAINS_SHOP", "shop.example"),
        ]);
        assert!(
            e.starts_with("HERALD_RELAY_URL:") && e.contains("default"),
            "{e}"
        );
        let e = error(&[
            ("HERALD_RELAY_URL", "smtp://d"),
            ("HERALD_RELAY_DOMAINS_SHOP", "shop.example"),
        ]);
        assert!(e.starts_with("HERALD_RELAY_URL_SHOP"), "{e}");
        let e = error(&[
            ("HERALD_RELAY_URL", "smtp://d"),
            ("HERALD_RELAY_URL_SHOP", "smtp://s"),
        ]);
        assert!(e.starts_with("HERALD_RELAY_DOMAINS_SHOP"), "{e}");
        let e = error(&[("HERALD_RELAY_DEFAULT", "nope")]);
        assert!(e.starts_with("HERALD_RELAY_DEFAULT"), "{e}");
        let e = error(&[
            ("HERALD_RELAY_URL", "smtp://d"),
            ("HERALD_RELAY_URL_MAIN", "smtp://m"),
            ("HERALD_RELAY_DEFAULT", "main"),
        ]);
        assert!(e.starts_with("HERALD_RELAY_DEFAULT"), "{e}");
    }

    #[test]
    fn a_config_file_names_relays_in_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "relay_url = \"smtp://default.example\"\n\
             [relays.shop]\nurl = \"smtp://shop-relay.example?rate=5\"\ndomains = [\"shop.example\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.relays.len(), 1);
        assert_eq!(c.relays[0].name, "shop");
        assert_eq!(c.relays[0].domains, vec!["shop.example".to_string()]);
        std::fs::write(&path, "[relays.shop]\nhost = \"x\"\n").unwrap();
        assert!(
            Config::load(Some(&path))
                .unwrap_err()
                .to_string()
                .contains("unknown key \"host\"")
        );
    }

    #[test]
    fn a_config_file_sets_keys_and_rejects_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "from = \"Shop <shop@example.test>\"\nconcurrency = 8\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.default_from.as_deref(), Some("Shop <shop@example.test>"));
        assert_eq!(c.concurrency, 8);
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        assert!(
            Config::load(Some(&path))
                .unwrap_err()
                .to_string()
                .contains("unknown key \"colour\"")
        );
    }
}
