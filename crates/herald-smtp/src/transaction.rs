//! One mail transaction (RFC 5321 §3.3): MAIL FROM, RCPT TO for each recipient, then DATA or
//! BDAT, pipelined per RFC 2920 when the server offers it, with every reply read and attributed.
//!
//! With PIPELINING, MAIL + every RCPT + DATA leave in one write and the replies are read in order:
//! two round trips per message instead of 3 + recipients. With CHUNKING as well, BDAT and the
//! content join that write: one round trip. A refused recipient does not stop the others; if all
//! are refused the transaction is reset with RSET and the session stays usable.

use std::io::IoSlice;

use crate::{
    connection::Connection,
    dot_stuff::{BodySegment, WirePlan},
    envelope::Envelope,
    error::{Error, Stage},
    reply::{Reply, Status},
};

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub address: String,
    /// Final: `Accepted` only when both RCPT and the data phase were accepted.
    pub status: Status,
    /// The reply that decided `status`: the RCPT reply when RCPT was refused, else the final reply
    /// to the content (or the refusal of DATA/BDAT).
    pub reply: Reply,
    /// The reply to this recipient's RCPT TO.
    pub rcpt_reply: Reply,
}

/// The result of one transaction: one outcome per recipient, in envelope order, plus the
/// data-phase reply (`None` when no recipient was accepted, so no content was sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub recipients: Vec<RecipientOutcome>,
    pub data: Option<Reply>,
}

impl Delivery {
    /// True when every recipient was accepted.
    pub fn all_accepted(&self) -> bool {
        self.recipients.iter().all(|r| r.status == Status::Accepted)
    }

    /// Recipients that were accepted.
    pub fn accepted(&self) -> impl Iterator<Item = &RecipientOutcome> {
        self.recipients
            .iter()
            .filter(|r| r.status == Status::Accepted)
    }
}

impl Connection {
    /// Sends one message to the envelope's recipients. `body` is the content as segments (see
    /// [`BodySegment`]): it is streamed to the socket with `writev`, never copied whole.
    ///
    /// `Ok` carries per-recipient outcomes (some may be refused). `Err` applies to every recipient:
    /// the message was refused as a whole (MAIL FROM, a 421 at any point, too big) or the session
    /// failed; [`Error::outcome_unknown`] tells whether it may have been accepted anyway.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        body: &[BodySegment],
    ) -> Result<Delivery, Error> {
        self.send_parts(
            envelope,
            body.iter()
                .map(|segment| (&segment.bytes[..], segment.dot_safe)),
        )
        .await
    }

    /// [`Connection::send`] for content in one buffer (scanned: normalised and dot-stuffed).
    pub async fn send_raw(&mut self, envelope: &Envelope, body: &[u8]) -> Result<Delivery, Error> {
        self.send_parts(envelope, [(body, false)]).await
    }

    pub(crate) async fn send_parts<'a>(
        &mut self,
        envelope: &Envelope,
        parts: impl IntoIterator<Item = (&'a [u8], bool)>,
    ) -> Result<Delivery, Error> {
        self.acknowledged_in_transaction = 0;
        if !self.is_usable() {
            return Err(Error::ConnectionLost {
                stage: Stage::MailFrom,
                outcome_unknown: false,
            });
        }
        envelope.validate()?;
        let extensions = self.extensions().clone();
        let chunking = self.use_chunking && extensions.chunking;
        let plan = WirePlan::build(parts, !chunking);
        let size = plan.len as u64;
        if let Some(limit) = extensions.size.filter(|&limit| limit > 0 && size > limit) {
            return Err(Error::MessageTooBig { size, limit });
        }
        let smtputf8 = envelope.needs_smtputf8();
        if smtputf8 && !extensions.smtputf8 {
            return Err(Error::ExtensionRequired {
                extension: "SMTPUTF8",
            });
        }
        if envelope.eight_bit && !extensions.eight_bit_mime {
            return Err(Error::ExtensionRequired {
                extension: "8BITMIME",
            });
        }
        self.last_used = std::time::Instant::now();

        let result = if extensions.pipelining {
            self.pipelined(envelope, &plan, size, smtputf8, chunking)
                .await
        } else {
            self.lockstep(envelope, &plan, size, smtputf8, chunking)
                .await
        };
        if result.is_ok() {
            self.transactions += 1;
        }
        self.last_used = std::time::Instant::now();
        result
    }

    /// RFC 2920: MAIL, all RCPTs and DATA (or BDAT + content) in one write; then read every reply.
    async fn pipelined(
        &mut self,
        envelope: &Envelope,
        plan: &WirePlan<'_>,
        size: u64,
        smtputf8: bool,
        chunking: bool,
    ) -> Result<Delivery, Error> {
        let extensions = self.extensions().clone();
        let timeouts = *self.timeouts();
        let mut commands = std::mem::take(&mut self.wbuf);
        commands.clear();
        envelope.write_mail_from(&mut commands, &extensions, size, smtputf8);
        for recipient in &envelope.recipients {
            envelope.write_rcpt_to(&mut commands, recipient, &extensions);
        }
        let written = if chunking {
            commands.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
            let mut slices = Vec::with_capacity(plan.slices.len() + 1);
            slices.push(IoSlice::new(&commands));
            slices.extend(plan.slices.iter().map(|s| IoSlice::new(s)));
            self.write_vectored_all(&mut slices, Stage::MailFrom, timeouts.data_block)
                .await
        } else {
            commands.extend_from_slice(b"DATA\r\n");
            self.write_command(&commands, Stage::MailFrom, timeouts.mail)
                .await
        };
        self.wbuf = commands;
        written?;

        let mail = self.read_reply(Stage::MailFrom, timeouts.mail).await?;
        self.check_closing(Stage::MailFrom, &mail)?;
        let mut rcpt_replies = Vec::with_capacity(envelope.recipients.len());
        for _ in &envelope.recipients {
            let reply = self.read_reply(Stage::RcptTo, timeouts.rcpt).await?;
            self.check_closing(Stage::RcptTo, &reply)?;
            rcpt_replies.push(reply);
        }
        let accepted = mail.is_positive() && rcpt_replies.iter().any(Reply::is_positive);

        let data = if chunking {
            // The content went with the commands; this is the final reply (or a refusal of BDAT
            // because no recipient was accepted).
            let reply = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
            self.check_closing(Stage::DataEnd, &reply)?;
            reply
        } else {
            let reply = self.read_reply(Stage::Data, timeouts.data_init).await?;
            self.check_closing(Stage::Data, &reply)?;
            if reply.code == 354 && !accepted {
                // RFC 2920 §3.1 says a server must refuse DATA without a valid recipient; one that
                // does not gets an empty message it cannot deliver.
                self.write_command(b".\r\n", Stage::DataBlock, timeouts.data_block)
                    .await?;
                let _ = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
                reply
            } else if reply.code == 354 {
                self.write_content(plan, timeouts.data_block).await?;
                let reply = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
                self.check_closing(Stage::DataEnd, &reply)?;
                reply
            } else {
                reply
            }
        };

        if !mail.is_positive() {
            self.rset().await?;
            return Err(Error::Rejected {
                stage: Stage::MailFrom,
                reply: mail,
            });
        }
        self.finish(envelope, rcpt_replies, accepted.then_some(data))
            .await
    }

    /// Without PIPELINING: one command, one reply (RFC 5321 §4.3).
    async fn lockstep(
        &mut self,
        envelope: &Envelope,
        plan: &WirePlan<'_>,
        size: u64,
        smtputf8: bool,
        chunking: bool,
    ) -> Result<Delivery, Error> {
        let extensions = self.extensions().clone();
        let timeouts = *self.timeouts();
        let mut line = std::mem::take(&mut self.wbuf);
        line.clear();
        envelope.write_mail_from(&mut line, &extensions, size, smtputf8);
        let written = self
            .write_command(&line, Stage::MailFrom, timeouts.mail)
            .await;
        self.wbuf = line;
        written?;
        let mail = self.read_reply(Stage::MailFrom, timeouts.mail).await?;
        self.check_closing(Stage::MailFrom, &mail)?;
        if !mail.is_positive() {
            return Err(Error::Rejected {
                stage: Stage::MailFrom,
                reply: mail,
            });
        }

        let mut rcpt_replies = Vec::with_capacity(envelope.recipients.len());
        for recipient in &envelope.recipients {
            let mut line = std::mem::take(&mut self.wbuf);
            line.clear();
            envelope.write_rcpt_to(&mut line, recipient, &extensions);
            let written = self
                .write_command(&line, Stage::RcptTo, timeouts.rcpt)
                .await;
            self.wbuf = line;
            written?;
            let reply = self.read_reply(Stage::RcptTo, timeouts.rcpt).await?;
            self.check_closing(Stage::RcptTo, &reply)?;
            rcpt_replies.push(reply);
        }
        let accepted = rcpt_replies.iter().any(Reply::is_positive);
        if !accepted {
            return self.finish(envelope, rcpt_replies, None).await;
        }

        let data = if chunking {
            let command = format!("BDAT {size} LAST\r\n");
            let mut slices = Vec::with_capacity(plan.slices.len() + 1);
            slices.push(IoSlice::new(command.as_bytes()));
            slices.extend(plan.slices.iter().map(|s| IoSlice::new(s)));
            self.write_vectored_all(&mut slices, Stage::DataBlock, timeouts.data_block)
                .await?;
            let reply = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
            self.check_closing(Stage::DataEnd, &reply)?;
            reply
        } else {
            self.write_command(b"DATA\r\n", Stage::Data, timeouts.data_init)
                .await?;
            let reply = self.read_reply(Stage::Data, timeouts.data_init).await?;
            self.check_closing(Stage::Data, &reply)?;
            if reply.code == 354 {
                self.write_content(plan, timeouts.data_block).await?;
                let reply = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
                self.check_closing(Stage::DataEnd, &reply)?;
                reply
            } else {
                reply
            }
        };
        self.finish(envelope, rcpt_replies, Some(data)).await
    }

    /// Sends the content and the terminating `.` line (RFC 5321 §4.1.1.4) in one `writev` stream.
    async fn write_content(
        &mut self,
        plan: &WirePlan<'_>,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let mut slices = Vec::with_capacity(plan.slices.len() + 1);
        slices.extend(plan.slices.iter().map(|s| IoSlice::new(s)));
        slices.push(IoSlice::new(b".\r\n"));
        self.write_vectored_all(&mut slices, Stage::DataBlock, timeout)
            .await
    }

    /// Attributes replies to recipients. `data` is the data-phase reply, present when at least one
    /// recipient was accepted. Unless the content was accepted, the transaction is reset (RSET is
    /// valid at any point, RFC 5321 §4.1.1.5) so the session is clean for the next one.
    async fn finish(
        &mut self,
        envelope: &Envelope,
        rcpt_replies: Vec<Reply>,
        data: Option<Reply>,
    ) -> Result<Delivery, Error> {
        if !data.as_ref().is_some_and(Reply::is_positive) {
            self.rset().await?;
        }
        let recipients = envelope
            .recipients
            .iter()
            .zip(rcpt_replies)
            .map(|(address, rcpt_reply)| {
                let reply = match &data {
                    Some(data) if rcpt_reply.is_positive() => data.clone(),
                    _ => rcpt_reply.clone(),
                };
                RecipientOutcome {
                    address: address.clone(),
                    status: reply.status(),
                    reply,
                    rcpt_reply,
                }
            })
            .collect();
        Ok(Delivery { recipients, data })
    }
}
