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
    ("HERALD_API_TOKEN", "bearer token required on /v1/*"),
    ("HERALD_FROM", "default sender when a request has none"),
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
        "HERALD_CONCURRENCY",
        "messages in flight at once (default 64)",
    ),
    (
        "HERALD_LEASE",
        "how long a node holds a claimed message before another may take it over (default 15m)",
    ),
];

/// Everything `herald serve` needs to start.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub relay_url: Option<String>,
    pub relay_password: Option<String>,
    pub api_token: Option<String>,
    pub default_from: Option<String>,
    pub message_id_domain: Option<String>,
    pub retry: RetryPolicy,
    pub retention: Option<Duration>,
    pub body_limit: usize,
    pub concurrency: usize,
    pub lease: Duration,
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
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("default_from", &self.default_from)
            .field("retry", &self.retry)
            .field("retention", &self.retention)
            .field("body_limit", &self.body_limit)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
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
        let number = |key: &str, default: usize| -> Result<usize, ConfigError> {
            match get(key) {
                None => Ok(default),
                Some(text) => match text.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(invalid(
                        key,
                        format!("{text:?} is not a positive whole number"),
                    )),
                },
            }
        };
        Ok(Config {
            listen,
            database_url: get("HERALD_DATABASE_URL")
                .unwrap_or("sqlite://./herald-data/herald.db")
                .to_owned(),
            relay_url: get("HERALD_RELAY_URL").map(str::to_owned),
            relay_password: get("HERALD_RELAY_PASSWORD").map(str::to_owned),
            api_token: get("HERALD_API_TOKEN").map(str::to_owned),
            default_from: get("HERALD_FROM").map(str::to_owned),
            message_id_domain: get("HERALD_MESSAGE_ID_DOMAIN").map(str::to_owned),
            retry,
            retention,
            body_limit: number("HERALD_BODY_LIMIT", 25 * 1024 * 1024)?,
            concurrency: number("HERALD_CONCURRENCY", 64)?,
            lease: parse_duration(get("HERALD_LEASE").unwrap_or("15m"))
                .map_err(|e| invalid("HERALD_LEASE", e))?,
        })
    }

    /// Refuses a configuration that would expose an unauthenticated API beyond this machine.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.api_token.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "HERALD_API_TOKEN".into(),
                message: format!(
                    "not set, and HERALD_LISTEN={} is not a loopback address: refusing to serve an API without \
                     authentication to the network (set HERALD_API_TOKEN, or listen on 127.0.0.1)",
                    self.listen
                ),
            });
        }
        Ok(())
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
    fn defaults_are_the_documented_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8025");
        assert_eq!(c.database_url, "sqlite://./herald-data/herald.db");
        assert!(c.relay_url.is_none());
        assert_eq!(c.body_limit, 25 * 1024 * 1024);
        assert_eq!(c.retry, RetryPolicy::default());
        assert_eq!(c.lease, Duration::from_secs(900));
        c.check_exposure().unwrap();
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
    }

    #[test]
    fn an_open_listener_needs_a_token() {
        let open = config(&[("HERALD_LISTEN", "0.0.0.0:8025")]).unwrap();
        assert!(
            open.check_exposure()
                .unwrap_err()
                .to_string()
                .contains("HERALD_API_TOKEN")
        );
        let guarded = config(&[
            ("HERALD_LISTEN", "0.0.0.0:8025"),
            ("HERALD_API_TOKEN", "s3cret"),
        ])
        .unwrap();
        guarded.check_exposure().unwrap();
        assert!(
            !format!("{guarded:?}").contains("s3cret"),
            "Debug never shows the token"
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
