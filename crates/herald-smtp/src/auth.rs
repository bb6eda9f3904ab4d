//! AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, XOAUTH2. Credentials are redacted in Debug output and
//! never put into logs or errors; only the server's replies are.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{
    connection::Connection,
    error::{Error, Stage},
    reply::Reply,
};

/// An AUTH mechanism Herald can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    XOAuth2,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
        })
    }
}

/// A password or an OAuth2 bearer token. Debug prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretKind {
    Password,
    BearerToken,
}

/// User name plus password (PLAIN, LOGIN) or OAuth2 access token (XOAUTH2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    secret: Secret,
    kind: SecretKind,
}

impl Credentials {
    /// User name and password.
    pub fn password(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            secret: Secret(password.into()),
            kind: SecretKind::Password,
        }
    }

    /// User name and OAuth2 access token, for XOAUTH2.
    pub fn oauth2(username: impl Into<String>, token: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            secret: Secret(token.into()),
            kind: SecretKind::BearerToken,
        }
    }

    /// The user name (not secret; shown in logs).
    pub fn username(&self) -> &str {
        &self.username
    }

    fn choose(&self, offered: u64, forced: Option<Mechanism>) -> Option<Mechanism> {
        if let Some(mechanism) = forced {
            return Some(mechanism);
        }
        match self.kind {
            SecretKind::BearerToken => {
                (offered & smtp_proto::AUTH_XOAUTH2 != 0).then_some(Mechanism::XOAuth2)
            }
            // PLAIN first: one round trip instead of three.
            SecretKind::Password if offered & smtp_proto::AUTH_PLAIN != 0 => Some(Mechanism::Plain),
            SecretKind::Password if offered & smtp_proto::AUTH_LOGIN != 0 => Some(Mechanism::Login),
            SecretKind::Password => None,
        }
    }
}

/// Names of the mechanisms in smtp-proto's bit set that matter to us, for error messages.
pub(crate) fn offered_names(offered: u64) -> String {
    let mut names = Vec::new();
    for (bit, name) in [
        (smtp_proto::AUTH_PLAIN, "PLAIN"),
        (smtp_proto::AUTH_LOGIN, "LOGIN"),
        (smtp_proto::AUTH_XOAUTH2, "XOAUTH2"),
        (smtp_proto::AUTH_CRAM_MD5, "CRAM-MD5"),
        (smtp_proto::AUTH_OAUTHBEARER, "OAUTHBEARER"),
        (smtp_proto::AUTH_SCRAM_SHA_256, "SCRAM-SHA-256"),
    ] {
        if offered & bit != 0 {
            names.push(name);
        }
    }
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(" ")
    }
}

impl Connection {
    /// Authenticates with `credentials`; the caller has checked the transport is acceptable.
    pub(crate) async fn authenticate(
        &mut self,
        credentials: &Credentials,
        forced: Option<Mechanism>,
    ) -> Result<(), Error> {
        let offered = self.extensions().auth_mechanisms;
        let mechanism =
            credentials
                .choose(offered, forced)
                .ok_or_else(|| Error::AuthUnsupported {
                    host: self.host().to_string(),
                    offered: offered_names(offered),
                })?;
        tracing::debug!(host = self.host(), user = credentials.username(), %mechanism, "AUTH");
        let timeout = self.timeouts().command;
        let user = credentials.username.as_bytes();
        let secret = credentials.secret.0.as_bytes();
        let reply = match mechanism {
            Mechanism::Plain => {
                // RFC 4616: authzid NUL authcid NUL passwd, sent as an initial response.
                let mut token = Vec::with_capacity(user.len() + secret.len() + 2);
                token.push(0);
                token.extend_from_slice(user);
                token.push(0);
                token.extend_from_slice(secret);
                self.auth_line(
                    format!("AUTH PLAIN {}\r\n", STANDARD.encode(&token)),
                    timeout,
                )
                .await?
            }
            Mechanism::Login => {
                let reply = self
                    .auth_line("AUTH LOGIN\r\n".to_string(), timeout)
                    .await?;
                expect_challenge(&reply)?;
                let reply = self
                    .auth_line(format!("{}\r\n", STANDARD.encode(user)), timeout)
                    .await?;
                expect_challenge(&reply)?;
                self.auth_line(format!("{}\r\n", STANDARD.encode(secret)), timeout)
                    .await?
            }
            Mechanism::XOAuth2 => {
                let mut token = Vec::with_capacity(user.len() + secret.len() + 20);
                token.extend_from_slice(b"user=");
                token.extend_from_slice(user);
                token.extend_from_slice(b"\x01auth=Bearer ");
                token.extend_from_slice(secret);
                token.extend_from_slice(b"\x01\x01");
                let reply = self
                    .auth_line(
                        format!("AUTH XOAUTH2 {}\r\n", STANDARD.encode(&token)),
                        timeout,
                    )
                    .await?;
                if reply.code == 334 {
                    // The server sent a base64 JSON error as a challenge; an empty response ends the
                    // exchange and gets the real failure reply.
                    self.auth_line("\r\n".to_string(), timeout).await?
                } else {
                    reply
                }
            }
        };
        if reply.code == 235 {
            Ok(())
        } else {
            Err(Error::AuthFailed { reply })
        }
    }

    /// Sends one AUTH line (which may hold a credential: never logged) and reads the reply.
    async fn auth_line(
        &mut self,
        line: String,
        timeout: std::time::Duration,
    ) -> Result<Reply, Error> {
        self.write_command(line.as_bytes(), Stage::Auth, timeout)
            .await?;
        drop(line);
        let reply = self.read_reply(Stage::Auth, timeout).await?;
        self.check_closing(Stage::Auth, &reply)?;
        Ok(reply)
    }
}

fn expect_challenge(reply: &Reply) -> Result<(), Error> {
    if reply.code == 334 {
        Ok(())
    } else {
        Err(Error::AuthFailed {
            reply: reply.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let credentials = Credentials::password("alice", "hunter2-very-secret");
        let shown = format!("{credentials:?} {credentials:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let token = Credentials::oauth2("bob", "ya29.token");
        assert!(!format!("{token:?}").contains("ya29"));
    }

    #[test]
    fn prefers_plain_then_login_and_xoauth2_for_tokens() {
        let password = Credentials::password("u", "p");
        let both = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
        assert_eq!(password.choose(both, None), Some(Mechanism::Plain));
        assert_eq!(
            password.choose(smtp_proto::AUTH_LOGIN, None),
            Some(Mechanism::Login)
        );
        assert_eq!(password.choose(smtp_proto::AUTH_CRAM_MD5, None), None);
        let token = Credentials::oauth2("u", "t");
        assert_eq!(
            token.choose(both | smtp_proto::AUTH_XOAUTH2, None),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(token.choose(both, None), None);
    }
}
