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
        // Before anything is sent: the reply to the very first AUTH line may echo it.
        self.secrets = echoes_of(mechanism, user, secret);
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

/// Everything of the credentials that AUTH puts on the wire, in the forms a relay could echo: the secret
/// itself, its base64 (LOGIN's last line) and the whole base64 initial response (PLAIN, XOAUTH2).
fn echoes_of(mechanism: Mechanism, user: &[u8], secret: &[u8]) -> Vec<String> {
    let mut echoes = vec![String::from_utf8_lossy(secret).into_owned()];
    echoes.push(STANDARD.encode(secret));
    let mut plain = vec![0];
    plain.extend_from_slice(user);
    plain.push(0);
    plain.extend_from_slice(secret);
    echoes.push(STANDARD.encode(&plain));
    if mechanism == Mechanism::XOAuth2 {
        let mut token = b"user=".to_vec();
        token.extend_from_slice(user);
        token.extend_from_slice(b"\x01auth=Bearer ");
        token.extend_from_slice(secret);
        token.extend_from_slice(b"\x01\x01");
        echoes.push(STANDARD.encode(&token));
    }
    echoes.retain(|echo| !echo.is_empty());
    echoes
}

/// `text` with every trace of `secrets` replaced by `<redacted>`: each secret where it appears whole, and
/// any word that is the secret or a piece of one at least 8 characters long (a relay may echo a truncated
/// or line-wrapped base64 response).
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    const REDACTED: &str = "<redacted>";
    let mut text = text.to_owned();
    for secret in secrets {
        // Shorter secrets would also match inside ordinary words; those are caught as whole words below.
        if secret.len() >= 4 {
            text = text.replace(secret.as_str(), REDACTED);
        }
    }
    let is_piece = |word: &str| {
        !word.is_empty()
            && word != REDACTED
            && secrets
                .iter()
                .any(|secret| word == secret || (word.len() >= 8 && secret.contains(word)))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let start = rest.find(|c: char| !is_separator(c)).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(is_separator).unwrap_or(rest.len());
        let word = &rest[..end];
        out.push_str(if is_piece(word) { REDACTED } else { word });
        rest = &rest[end..];
    }
    out
}

/// Characters that end a word for [`redact`]: never part of base64 or of a typical echo's token.
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '.' | '!' | '?'
        )
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
    fn echoed_credentials_are_redacted() {
        let secrets = echoes_of(Mechanism::Plain, b"alice", b"hunter2-secret");
        let plain = STANDARD.encode(b"\0alice\0hunter2-secret");
        let login = STANDARD.encode(b"hunter2-secret");
        for (reply, leaked) in [
            (format!("5.7.8 bad AUTH PLAIN {plain}"), plain.as_str()),
            (format!("5.7.8 bad password <{login}>"), login.as_str()),
            (
                "5.7.8 password hunter2-secret is wrong".to_string(),
                "hunter2",
            ),
            (
                format!("5.7.8 bad token: {}...", &plain[..12]),
                &plain[..12],
            ),
        ] {
            let redacted = redact(&reply, &secrets);
            assert!(!redacted.contains(leaked), "{redacted}");
            assert!(redacted.contains("<redacted>"), "{redacted}");
            assert!(
                redacted.starts_with("5.7.8 "),
                "the rest is kept: {redacted}"
            );
        }
        assert_eq!(
            redact("5.7.8 Authentication credentials invalid", &secrets),
            "5.7.8 Authentication credentials invalid"
        );
        let short = echoes_of(Mechanism::Login, b"u", b"pw");
        assert_eq!(
            redact("535 wrong pw for u, pwned", &short),
            "535 wrong <redacted> for u, pwned",
            "a short secret is redacted only as a whole word"
        );
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
