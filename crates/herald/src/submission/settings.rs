//! `HERALD_SMTP_*` settings of the submission listener, read with the rest of the configuration
//! ([`crate::config::Config`]) and checked at start, each error naming its key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::config::{ConfigError, default_max_connections, positive_duration, positive_number};

/// Defaults, as the README states them.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_MAX_ERRORS: usize = 10;

/// How the submission listener is set up. `listen` and `smtps_listen` unset: no listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: Option<SocketAddr>,
    pub smtps_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub hostname: Option<String>,
    pub max_sessions: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_errors: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: None,
            smtps_listen: None,
            tls_cert: None,
            tls_key: None,
            hostname: None,
            max_sessions: default_max_connections(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            data_timeout: DEFAULT_DATA_TIMEOUT,
            max_errors: DEFAULT_MAX_ERRORS,
        }
    }
}

impl Settings {
    /// Reads the `HERALD_SMTP_*` keys through `get` (trimmed, empty as unset).
    pub fn from_values<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let address = |key: &str| -> Result<Option<SocketAddr>, ConfigError> {
            get(key)
                .map(|text| {
                    text.parse().map_err(|e| {
                        invalid(
                            key,
                            format!("{text:?} is not an address like 127.0.0.1:2525: {e}"),
                        )
                    })
                })
                .transpose()
        };
        let number = |key: &str, default: usize| positive_number(key, get(key), default);
        let duration = |key: &str, default: Duration| positive_duration(key, get(key), default);
        let settings = Settings {
            listen: address("HERALD_SMTP_LISTEN")?,
            smtps_listen: address("HERALD_SMTPS_LISTEN")?,
            tls_cert: get("HERALD_SMTP_TLS_CERT").map(PathBuf::from),
            tls_key: get("HERALD_SMTP_TLS_KEY").map(PathBuf::from),
            hostname: get("HERALD_SMTP_HOSTNAME").map(str::to_owned),
            max_sessions: number("HERALD_SMTP_MAX_SESSIONS", default_max_connections())?,
            command_timeout: duration("HERALD_SMTP_COMMAND_TIMEOUT", DEFAULT_COMMAND_TIMEOUT)?,
            data_timeout: duration("HERALD_SMTP_DATA_TIMEOUT", DEFAULT_DATA_TIMEOUT)?,
            max_errors: number("HERALD_SMTP_MAX_ERRORS", DEFAULT_MAX_ERRORS)?,
        };
        match (&settings.tls_cert, &settings.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "HERALD_SMTP_TLS_KEY",
                    "not set, but HERALD_SMTP_TLS_CERT is: give both or neither".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "HERALD_SMTP_TLS_CERT",
                    "not set, but HERALD_SMTP_TLS_KEY is: give both or neither".into(),
                ));
            }
            _ => {}
        }
        if settings.smtps_listen.is_some() && settings.tls_cert.is_none() {
            return Err(invalid(
                "HERALD_SMTPS_LISTEN",
                "implicit TLS needs a certificate: set HERALD_SMTP_TLS_CERT and HERALD_SMTP_TLS_KEY".into(),
            ));
        }
        Ok(settings)
    }

    /// Whether any SMTP listener is configured.
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.smtps_listen.is_some()
    }

    /// Refuses to accept mail without authentication from beyond this machine, as the HTTP API does
    /// ([`crate::config::Config::check_exposure`]): without any token, both ports must be on loopback.
    pub fn check_exposure(&self, any_token: bool) -> Result<(), ConfigError> {
        if any_token {
            return Ok(());
        }
        for (key, address) in [
            ("HERALD_SMTP_LISTEN", self.listen),
            ("HERALD_SMTPS_LISTEN", self.smtps_listen),
        ] {
            if let Some(address) = address
                && !address.ip().is_loopback()
            {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    message: format!(
                        "{address} is not a loopback address and no token is configured: refusing to accept mail \
                         without authentication from the network (set HERALD_API_TOKEN, create a token with \
                         `herald token create NAME`, or listen on 127.0.0.1)"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let values: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_values(|key| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()))
    }

    #[test]
    fn unset_means_no_listener_and_the_defaults() {
        let s = settings(&[]).unwrap();
        assert!(!s.enabled());
        assert_eq!(s.command_timeout, DEFAULT_COMMAND_TIMEOUT);
        assert_eq!(s.max_errors, DEFAULT_MAX_ERRORS);
    }

    #[test]
    fn bad_values_name_their_key() {
        let error = settings(&[("HERALD_SMTP_LISTEN", "nowhere")]).unwrap_err();
        assert!(
            error.to_string().starts_with("HERALD_SMTP_LISTEN"),
            "{error}"
        );
        let error = settings(&[("HERALD_SMTP_TLS_CERT", "/c.pem")]).unwrap_err();
        assert!(
            error.to_string().starts_with("HERALD_SMTP_TLS_KEY"),
            "{error}"
        );
        let error = settings(&[("HERALD_SMTPS_LISTEN", "127.0.0.1:465")]).unwrap_err();
        assert!(
            error.to_string().starts_with("HERALD_SMTPS_LISTEN"),
            "{error}"
        );
        let error = settings(&[("HERALD_SMTP_MAX_ERRORS", "0")]).unwrap_err();
        assert!(
            error.to_string().starts_with("HERALD_SMTP_MAX_ERRORS"),
            "{error}"
        );
    }

    #[test]
    fn the_network_without_a_token_is_refused() {
        let open = settings(&[("HERALD_SMTP_LISTEN", "0.0.0.0:587")]).unwrap();
        let error = open.check_exposure(false).unwrap_err();
        assert!(
            error.to_string().starts_with("HERALD_SMTP_LISTEN"),
            "{error}"
        );
        assert!(open.check_exposure(true).is_ok());
        let local = settings(&[("HERALD_SMTP_LISTEN", "127.0.0.1:2525")]).unwrap();
        assert!(local.check_exposure(false).is_ok());
    }
}
