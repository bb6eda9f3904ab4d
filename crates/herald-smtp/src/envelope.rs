//! The envelope (RFC 5321 §2.3.1): reverse-path, forward-paths and the MAIL/RCPT parameters
//! (SIZE, BODY, SMTPUTF8, DSN).

use std::fmt::Write as _;

use crate::{ehlo::Extensions, error::Error};

/// DSN RET (RFC 3461 §4.3): what a bounce should contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnReturn {
    Full,
    Headers,
}

/// DSN NOTIFY conditions (RFC 3461 §4.1), applied to every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsnNotify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// DSN parameters; sent only when the server offers DSN, silently left out otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dsn {
    pub ret: Option<DsnReturn>,
    /// ENVID, xtext-encoded on the wire.
    pub envid: Option<String>,
    /// `None` leaves NOTIFY to the server; `Some` with all false sends NOTIFY=NEVER.
    pub notify: Option<DsnNotify>,
}

/// Who the message is from and to, as the SMTP server sees it (not the headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path; empty for the null sender (`MAIL FROM:<>`, bounces).
    pub from: String,
    /// The forward-paths, one RCPT TO each; results come back in this order.
    pub recipients: Vec<String>,
    /// The content has 8-bit bytes outside base64/QP parts: sends BODY=8BITMIME (the server must
    /// offer it).
    pub eight_bit: bool,
    pub dsn: Option<Dsn>,
}

impl Envelope {
    pub fn new(
        from: impl Into<String>,
        recipients: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Envelope {
            from: from.into(),
            recipients: recipients.into_iter().map(Into::into).collect(),
            eight_bit: false,
            dsn: None,
        }
    }

    /// Refuses what cannot be put into a command line: no recipients, or an address with CR, LF,
    /// angle brackets or spaces (command injection), or longer than RFC 5321 §4.5.3.1.3 allows.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.recipients.is_empty() {
            return Err(Error::InvalidEnvelope("no recipients".to_string()));
        }
        for address in std::iter::once(&self.from).chain(&self.recipients) {
            if address.len() > 256
                || address
                    .bytes()
                    .any(|b| matches!(b, b'\r' | b'\n' | b'<' | b'>' | b' ' | b'\t' | 0))
            {
                return Err(Error::InvalidEnvelope(format!(
                    "address {address:?} cannot be used in SMTP"
                )));
            }
        }
        if self.recipients.iter().any(String::is_empty) {
            return Err(Error::InvalidEnvelope(
                "empty recipient address".to_string(),
            ));
        }
        Ok(())
    }

    /// True when an address needs SMTPUTF8 (RFC 6531): any non-ASCII byte.
    pub(crate) fn needs_smtputf8(&self) -> bool {
        !self.from.is_ascii() || self.recipients.iter().any(|r| !r.is_ascii())
    }

    /// Appends `MAIL FROM:<..> [SIZE=] [BODY=8BITMIME] [SMTPUTF8] [RET= ENVID=]\r\n`.
    pub(crate) fn write_mail_from(
        &self,
        out: &mut Vec<u8>,
        extensions: &Extensions,
        size: u64,
        smtputf8: bool,
    ) {
        out.extend_from_slice(b"MAIL FROM:<");
        out.extend_from_slice(self.from.as_bytes());
        out.push(b'>');
        let mut params = String::new();
        if extensions.size.is_some() {
            let _ = write!(params, " SIZE={size}");
        }
        if self.eight_bit && extensions.eight_bit_mime {
            params.push_str(" BODY=8BITMIME");
        }
        if smtputf8 {
            params.push_str(" SMTPUTF8");
        }
        if let (Some(dsn), true) = (&self.dsn, extensions.dsn) {
            match dsn.ret {
                Some(DsnReturn::Full) => params.push_str(" RET=FULL"),
                Some(DsnReturn::Headers) => params.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &dsn.envid {
                params.push_str(" ENVID=");
                xtext(envid, &mut params);
            }
        }
        out.extend_from_slice(params.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Appends `RCPT TO:<..> [NOTIFY=..]\r\n`.
    pub(crate) fn write_rcpt_to(
        &self,
        out: &mut Vec<u8>,
        recipient: &str,
        extensions: &Extensions,
    ) {
        out.extend_from_slice(b"RCPT TO:<");
        out.extend_from_slice(recipient.as_bytes());
        out.push(b'>');
        if let (
            Some(Dsn {
                notify: Some(notify),
                ..
            }),
            true,
        ) = (&self.dsn, extensions.dsn)
        {
            let mut conditions = Vec::new();
            if notify.success {
                conditions.push("SUCCESS");
            }
            if notify.failure {
                conditions.push("FAILURE");
            }
            if notify.delay {
                conditions.push("DELAY");
            }
            if conditions.is_empty() {
                conditions.push("NEVER");
            }
            out.extend_from_slice(b" NOTIFY=");
            out.extend_from_slice(conditions.join(",").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// RFC 3461 §4: xtext, `+XX` for '+', '=', controls and non-ASCII.
fn xtext(value: &str, out: &mut String) {
    for b in value.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parameters_only_when_offered() {
        let mut envelope = Envelope::new("a@x.test", ["b@y.test"]);
        envelope.eight_bit = true;
        envelope.dsn = Some(Dsn {
            ret: Some(DsnReturn::Headers),
            envid: Some("id+1=".to_string()),
            notify: Some(DsnNotify {
                failure: true,
                delay: true,
                success: false,
            }),
        });
        let mut out = Vec::new();
        envelope.write_mail_from(&mut out, &Extensions::default(), 42, false);
        envelope.write_rcpt_to(&mut out, "b@y.test", &Extensions::default());
        assert_eq!(out, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");

        let all = Extensions {
            size: Some(0),
            eight_bit_mime: true,
            smtputf8: true,
            dsn: true,
            ..Extensions::default()
        };
        out.clear();
        envelope.write_mail_from(&mut out, &all, 42, true);
        envelope.write_rcpt_to(&mut out, "b@y.test", &all);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "MAIL FROM:<a@x.test> SIZE=42 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3D\r\nRCPT TO:<b@y.test> NOTIFY=FAILURE,DELAY\r\n"
        );
    }

    #[test]
    fn refuses_command_injection() {
        assert!(
            Envelope::new("a@x.test", ["b@y.test>\r\nRCPT TO:<c@z.test"])
                .validate()
                .is_err()
        );
        assert!(
            Envelope::new("a@x.test", Vec::<String>::new())
                .validate()
                .is_err()
        );
        assert!(Envelope::new("", ["b@y.test"]).validate().is_ok());
        assert!(Envelope::new("", ["用户@例子.test"]).needs_smtputf8());
    }
}
