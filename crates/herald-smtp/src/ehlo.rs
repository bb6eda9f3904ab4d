//! EHLO (RFC 5321 §4.1.1.1) with HELO fallback, and the service extensions the server offers.

use smtp_proto::EhloResponse;

use crate::{
    connection::Connection,
    error::{Error, Stage},
};

/// What the server offered in its EHLO reply. After HELO everything is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The name the server gave in the first EHLO line.
    pub hostname: String,
    /// RFC 2920 command pipelining.
    pub pipelining: bool,
    /// RFC 1870 SIZE: `Some(limit)` when offered (`Some(0)` means no announced limit).
    pub size: Option<u64>,
    /// RFC 6152 8BITMIME.
    pub eight_bit_mime: bool,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3207 STARTTLS.
    pub starttls: bool,
    /// RFC 4954 AUTH mechanisms, as smtp-proto's `AUTH_*` bit set (0 when AUTH is not offered).
    pub auth_mechanisms: u64,
    /// RFC 3030 CHUNKING (BDAT).
    pub chunking: bool,
    /// RFC 2034 ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
    /// RFC 3461 DSN.
    pub dsn: bool,
}

impl Extensions {
    /// Parses a complete raw 250 EHLO reply with smtp-proto.
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, String> {
        let response = EhloResponse::<String>::parse(&mut raw.iter())
            .map_err(|error| format!("unparsable EHLO reply: {error:?}"))?;
        let has = |bit: u32| response.capabilities & bit != 0;
        Ok(Extensions {
            hostname: response.hostname.clone(),
            pipelining: has(smtp_proto::EXT_PIPELINING),
            size: has(smtp_proto::EXT_SIZE).then_some(response.size as u64),
            eight_bit_mime: has(smtp_proto::EXT_8BIT_MIME),
            smtputf8: has(smtp_proto::EXT_SMTP_UTF8),
            starttls: has(smtp_proto::EXT_START_TLS),
            auth_mechanisms: if has(smtp_proto::EXT_AUTH) {
                response.auth_mechanisms
            } else {
                0
            },
            chunking: has(smtp_proto::EXT_CHUNKING),
            enhanced_status_codes: has(smtp_proto::EXT_ENHANCED_STATUS_CODES),
            dsn: has(smtp_proto::EXT_DSN),
        })
    }
}

impl Connection {
    /// Says EHLO and records the extensions; falls back to HELO when the server does not know EHLO
    /// (RFC 5321 §3.2: a 5xx other than 554 to EHLO).
    pub(crate) async fn ehlo(&mut self, helo_name: &str) -> Result<(), Error> {
        let timeout = self.timeouts().command;
        self.write_command(
            format!("EHLO {helo_name}\r\n").as_bytes(),
            Stage::Ehlo,
            timeout,
        )
        .await?;
        let (reply, raw) = self.read_reply_raw(Stage::Ehlo, timeout).await?;
        self.check_closing(Stage::Ehlo, &reply)?;
        if reply.code == 250 {
            let extensions = Extensions::parse(&raw).map_err(|detail| Error::Protocol {
                stage: Stage::Ehlo,
                detail,
            })?;
            self.set_extensions(extensions);
            return Ok(());
        }
        if !(500..600).contains(&reply.code) || reply.code == 554 {
            return Err(Error::Rejected {
                stage: Stage::Ehlo,
                reply,
            });
        }
        self.write_command(
            format!("HELO {helo_name}\r\n").as_bytes(),
            Stage::Ehlo,
            timeout,
        )
        .await?;
        let reply = self.read_reply(Stage::Ehlo, timeout).await?;
        self.check_closing(Stage::Ehlo, &reply)?;
        if reply.code != 250 {
            return Err(Error::Rejected {
                stage: Stage::Ehlo,
                reply,
            });
        }
        self.set_extensions(Extensions {
            hostname: reply.text.split(' ').next().unwrap_or_default().to_string(),
            ..Extensions::default()
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_extensions_herald_uses() {
        let raw = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
250-STARTTLS\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n";
        let extensions = Extensions::parse(raw).unwrap();
        assert_eq!(extensions.hostname, "mx.example");
        assert!(
            extensions.pipelining
                && extensions.eight_bit_mime
                && extensions.smtputf8
                && extensions.starttls
        );
        assert!(extensions.chunking && extensions.enhanced_status_codes && extensions.dsn);
        assert_eq!(extensions.size, Some(10_240_000));
        let auth = extensions.auth_mechanisms;
        assert!(
            auth & smtp_proto::AUTH_PLAIN != 0
                && auth & smtp_proto::AUTH_LOGIN != 0
                && auth & smtp_proto::AUTH_XOAUTH2 != 0
        );

        let bare = Extensions::parse(b"250 only.name\r\n").unwrap();
        assert_eq!(
            bare,
            Extensions {
                hostname: "only.name".to_string(),
                ..Extensions::default()
            }
        );
    }

    #[test]
    fn parses_smtp_sink_ehlo_with_an_empty_last_line() {
        let raw = b"250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT NAME HELO\r\n\
250-XFORWARD NAME ADDR PROTO HELO\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 \r\n";
        let extensions = Extensions::parse(raw).unwrap();
        assert!(extensions.pipelining && extensions.eight_bit_mime && extensions.dsn);
        assert_eq!(extensions.size, None);
    }
}
