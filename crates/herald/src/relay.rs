//! Relay URLs: one string that says how to reach an SMTP relay, used by `herald send --relay`,
//! `herald bench smtp --relay` and (later) `herald serve`'s `HERALD_RELAY_URL`.
//!
//! ```text
//! smtp://[user[:password]@]host[:port][?key=value&...]    STARTTLS required (port 587)
//! smtps://[user[:password]@]host[:port][?key=value&...]   implicit TLS (port 465)
//! ```
//!
//! Query keys: `tls=required|opportunistic|none` (smtp:// only), `pool=N` (connections),
//! `ca=PATH` (extra trusted CA certificates, PEM), `timeout_s=N` (every SMTP wait),
//! `auth=plain|login|xoauth2` (xoauth2 takes the password as the bearer token),
//! `plaintext_auth=loopback` (allow AUTH without TLS when the relay is a loopback address),
//! `helo=NAME`, `chunking=on|off` (BDAT when offered; off by default). Delivery limits (used by
//! `herald serve`; `pool`, `rate`, `burst` and `domain_concurrency` are totals for the whole cluster, split across
//! live nodes): `rate=N` (messages per second, fractions allowed), `burst=N` (messages that may
//! leave at once; default a tenth of a second's worth), `domain_concurrency=N` (sessions carrying mail
//! for one recipient domain at once), `batch=N` (messages pipelined per session in one go, default 16).
//! An unknown key is an error. User name and password are percent-decoded; the password may come from
//! `HERALD_RELAY_PASSWORD` instead. Errors never repeat the URL, so a password in it cannot leak
//! into logs.

use std::{path::PathBuf, time::Duration};

use herald_smtp::{Credentials, Mechanism, PoolConfig, RelayConfig, Security, Timeouts};
use url::Url;

use crate::delivery::RelayLimits;

/// Connections per relay when the URL gives no `pool=`.
pub const DEFAULT_POOL: usize = 8;

/// The environment variable that can hold the relay password.
pub const PASSWORD_ENV: &str = "HERALD_RELAY_PASSWORD";

const KEYS: &str = "tls, pool, ca, timeout_s, auth, plaintext_auth, helo, chunking, rate, burst, domain_concurrency, batch";

/// A relay URL that could not be used; the message names the part that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid relay URL: {0}")]
pub struct RelayUrlError(String);

fn invalid(message: impl Into<String>) -> RelayUrlError {
    RelayUrlError(message.into())
}

/// A parsed relay URL: how to connect, how many connections to keep, and the delivery limits.
#[derive(Debug, Clone)]
pub struct Relay {
    pub config: RelayConfig,
    pub pool: PoolConfig,
    pub limits: RelayLimits,
}

impl Relay {
    /// Parses `url`; `env_password` is the value of [`PASSWORD_ENV`], used when the URL has a user
    /// but no password.
    pub fn parse(url: &str, env_password: Option<String>) -> Result<Relay, RelayUrlError> {
        // Do not echo the URL: it may hold a password.
        let parsed = Url::parse(url).map_err(|e| {
            invalid(format!(
                "{e} (expected smtp://[user[:password]@]host[:port][?key=value])"
            ))
        })?;
        let (security, default_port) = match parsed.scheme() {
            "smtp" => (Security::StartTlsRequired, 587),
            "smtps" => (Security::ImplicitTls, 465),
            other => {
                return Err(invalid(format!(
                    "scheme {other:?}: use smtp:// (STARTTLS) or smtps:// (implicit TLS)"
                )));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host"))?;
        // IPv6 literals come bracketed from the URL; sockets and certificates want them bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if parsed.path() != "" && parsed.path() != "/" {
            return Err(invalid("a relay URL has no path"));
        }
        let mut config = RelayConfig::new(host, parsed.port().unwrap_or(default_port));
        config.security = security;
        // The service contract: `pool=N`, default 8 connections per relay.
        let mut pool = PoolConfig {
            max_connections: DEFAULT_POOL,
            ..PoolConfig::default()
        };
        let mut limits = RelayLimits::default();

        let user = decode(parsed.username(), "user name")?;
        let password = match parsed.password() {
            Some(password) => Some(decode(password, "password")?),
            None => env_password.filter(|p| !p.is_empty()),
        };
        let mut mechanism = None;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "tls" => {
                    if config.security == Security::ImplicitTls {
                        return Err(invalid(
                            "tls= applies to smtp:// only (smtps:// is always TLS)",
                        ));
                    }
                    config.security = match value.as_ref() {
                        "required" | "starttls" => Security::StartTlsRequired,
                        "opportunistic" => Security::StartTlsOpportunistic,
                        "none" => Security::None,
                        other => {
                            return Err(invalid(format!(
                                "tls={other}: use required, opportunistic or none"
                            )));
                        }
                    };
                }
                "pool" => {
                    pool.max_connections = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| (1..=1000).contains(&n))
                        .ok_or_else(|| {
                            invalid(format!(
                                "pool={value}: a number of connections from 1 to 1000"
                            ))
                        })?;
                }
                "ca" => config.extra_ca_file = Some(PathBuf::from(value.as_ref())),
                "timeout_s" => {
                    let seconds = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                        .ok_or_else(|| {
                            invalid(format!("timeout_s={value}: seconds, more than 0"))
                        })?;
                    config.timeouts = Timeouts::all(Duration::from_secs_f64(seconds));
                }
                "auth" => {
                    mechanism = Some(match value.to_ascii_lowercase().as_str() {
                        "plain" => Mechanism::Plain,
                        "login" => Mechanism::Login,
                        "xoauth2" => Mechanism::XOAuth2,
                        other => {
                            return Err(invalid(format!(
                                "auth={other}: use plain, login or xoauth2"
                            )));
                        }
                    });
                }
                "plaintext_auth" => match value.as_ref() {
                    "loopback" => config.allow_plaintext_auth_on_loopback = true,
                    "never" => config.allow_plaintext_auth_on_loopback = false,
                    other => {
                        return Err(invalid(format!(
                            "plaintext_auth={other}: only loopback (or never) is allowed"
                        )));
                    }
                },
                "helo" => {
                    if value.is_empty()
                        || value
                            .bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                    {
                        return Err(invalid("helo= must be a host name"));
                    }
                    config.helo_name = value.into_owned();
                }
                "chunking" => {
                    config.use_chunking = match value.as_ref() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        other => return Err(invalid(format!("chunking={other}: use on or off"))),
                    };
                }
                "rate" => {
                    limits.rate = Some(
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1e6)
                            .ok_or_else(|| {
                                invalid(format!(
                                    "rate={value}: messages per second, more than 0 (e.g. 20 or 0.5)"
                                ))
                            })?,
                    );
                }
                "burst" => limits.burst = Some(count(&key, &value, 1_000_000)? as u32),
                "domain_concurrency" => {
                    limits.domain_concurrency = Some(count(&key, &value, 1000)?)
                }
                "batch" => limits.batch = count(&key, &value, 1000)?,
                other => {
                    return Err(invalid(format!(
                        "unknown query key {other:?} (known keys: {KEYS})"
                    )));
                }
            }
        }

        if !user.is_empty() {
            let password = password.ok_or_else(|| {
                invalid(format!(
                    "user {user:?} has no password: put it in the URL or in {PASSWORD_ENV}"
                ))
            })?;
            config.credentials = Some(match mechanism {
                Some(Mechanism::XOAuth2) => Credentials::oauth2(user, password),
                _ => Credentials::password(user, password),
            });
            config.auth_mechanism = mechanism;
        } else if mechanism.is_some() {
            return Err(invalid("auth= needs a user name in the URL"));
        }
        if limits.burst.is_some() && limits.rate.is_none() {
            return Err(invalid("burst= needs rate="));
        }
        Ok(Relay {
            config,
            pool,
            limits,
        })
    }

    /// `host:port` for messages (never the credentials).
    pub fn display_address(&self) -> String {
        if self.config.host.contains(':') {
            format!("[{}]:{}", self.config.host, self.config.port)
        } else {
            format!("{}:{}", self.config.host, self.config.port)
        }
    }
}

/// A whole number from 1 to `max` for query key `key`.
fn count(key: &str, value: &str, max: usize) -> Result<usize, RelayUrlError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| invalid(format!("{key}={value}: a whole number from 1 to {max}")))
}

fn decode(value: &str, what: &str) -> Result<String, RelayUrlError> {
    percent_decode(value)
        .ok_or_else(|| invalid(format!("the {what} is not valid percent-encoded UTF-8")))
}

/// Percent-decoding for the userinfo (the `url` crate leaves it encoded).
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Relay, RelayUrlError> {
        Relay::parse(url, None)
    }

    #[test]
    fn smtp_defaults_to_required_starttls_on_587() {
        let relay = parse("smtp://mail.example.com").unwrap();
        assert_eq!(
            (relay.config.host.as_str(), relay.config.port),
            ("mail.example.com", 587)
        );
        assert_eq!(relay.config.security, Security::StartTlsRequired);
        assert!(relay.config.credentials.is_none());
        assert_eq!(relay.display_address(), "mail.example.com:587");
    }

    #[test]
    fn smtps_is_implicit_tls_on_465_and_refuses_tls_key() {
        let relay = parse("smtps://u:p@mail.example.com").unwrap();
        assert_eq!(
            (relay.config.port, relay.config.security),
            (465, Security::ImplicitTls)
        );
        assert!(parse("smtps://mail.example.com?tls=none").is_err());
    }

    #[test]
    fn credentials_are_percent_decoded_and_redacted() {
        let relay =
            parse("smtp://us%40er:p%40ss%2Fw@127.0.0.1:2525?tls=none&plaintext_auth=loopback")
                .unwrap();
        let credentials = relay.config.credentials.clone().unwrap();
        assert_eq!(credentials, Credentials::password("us@er", "p@ss/w"));
        assert!(!format!("{relay:?}").contains("p@ss"));
        assert!(relay.config.allow_plaintext_auth_on_loopback);
        assert_eq!(relay.config.security, Security::None);
    }

    #[test]
    fn the_password_can_come_from_the_environment() {
        let relay = Relay::parse("smtp://user@host", Some("from-env".into())).unwrap();
        assert_eq!(
            relay.config.credentials,
            Some(Credentials::password("user", "from-env"))
        );
        let relay = Relay::parse("smtp://user:in-url@host", Some("from-env".into())).unwrap();
        assert_eq!(
            relay.config.credentials,
            Some(Credentials::password("user", "in-url"))
        );
        let error = parse("smtp://user@host").unwrap_err().to_string();
        assert!(error.contains(PASSWORD_ENV), "{error}");
    }

    #[test]
    fn pool_defaults_to_eight_connections() {
        assert_eq!(
            parse("smtp://h:25").unwrap().pool.max_connections,
            DEFAULT_POOL
        );
        assert_eq!(DEFAULT_POOL, 8);
    }

    #[test]
    fn query_keys() {
        let relay = parse("smtp://h:25?tls=opportunistic&pool=8&ca=/tmp/ca.pem&timeout_s=2.5&helo=me.example&chunking=on").unwrap();
        assert_eq!(relay.config.security, Security::StartTlsOpportunistic);
        assert_eq!(relay.pool.max_connections, 8);
        assert_eq!(
            relay.config.extra_ca_file,
            Some(PathBuf::from("/tmp/ca.pem"))
        );
        assert_eq!(
            relay.config.timeouts,
            Timeouts::all(Duration::from_millis(2500))
        );
        assert_eq!(relay.config.helo_name, "me.example");
        assert!(relay.config.use_chunking);
        assert!(!parse("smtp://h").unwrap().config.use_chunking);
        let relay = parse("smtp://u:token@h?auth=xoauth2").unwrap();
        assert_eq!(
            relay.config.credentials,
            Some(Credentials::oauth2("u", "token"))
        );
        assert_eq!(relay.config.auth_mechanism, Some(Mechanism::XOAuth2));
    }

    #[test]
    fn delivery_limits() {
        let relay = parse("smtp://h?pool=2&rate=20&burst=5&domain_concurrency=3&batch=8").unwrap();
        assert_eq!(relay.pool.max_connections, 2);
        assert_eq!(
            relay.limits,
            RelayLimits {
                rate: Some(20.0),
                burst: Some(5),
                domain_concurrency: Some(3),
                batch: 8,
            }
        );
        assert_eq!(parse("smtp://h").unwrap().limits, RelayLimits::default());
        assert_eq!(parse("smtp://h?rate=0.5").unwrap().limits.rate, Some(0.5));
        for bad in [
            "smtp://h?rate=0",
            "smtp://h?rate=fast",
            "smtp://h?burst=3",
            "smtp://h?rate=1&burst=0",
            "smtp://h?domain_concurrency=0",
            "smtp://h?batch=-1",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("invalid relay URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn errors_are_clear_and_never_repeat_the_password() {
        let error = parse("smtp://u:secret@h?colour=blue")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown query key \"colour\"") && error.contains("known keys"),
            "{error}"
        );
        assert!(!error.contains("secret"));
        for bad in [
            "http://h",
            "smtp://h?tls=maybe",
            "smtp://h?pool=0",
            "smtp://h?timeout_s=-1",
            "smtp://h/path",
            "smtp://:pw@",
            "nonsense",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("invalid relay URL"), "{bad}: {error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets() {
        let relay = parse("smtp://[::1]:2525?tls=none").unwrap();
        assert_eq!(relay.config.host, "::1");
        assert_eq!(relay.display_address(), "[::1]:2525");
    }
}
