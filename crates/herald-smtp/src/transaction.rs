//! One mail transaction (RFC 5321 §3.3): MAIL FROM, RCPT TO for each recipient, then DATA or
//! BDAT, pipelined per RFC 2920 when the server offers it, with every reply read and attributed.
//!
//! With PIPELINING, MAIL + every RCPT + DATA leave in one write and the replies are read in order:
//! two round trips per message instead of 3 + recipients. In a batch, the content of one message,
//! its final `.` and the next message's MAIL + RCPT + DATA go out in one write (RFC 2920 §3.1:
//! content may start a group), so a stream of messages costs one round trip each, as Postfix's
//! own client does. With CHUNKING, BDAT and the content join the commands: one round trip.
//! A refused recipient does not stop the others; if all are refused the transaction is reset with
//! RSET and the session stays usable.

use std::{io::IoSlice, time::Instant};

use crate::{
    connection::Connection,
    dot_stuff::{BodySegment, WirePlan},
    ehlo::Extensions,
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

/// Message content as (bytes, dot_safe) pieces, borrowed from [`BodySegment`]s or a buffer.
pub(crate) type Parts<'a> = Vec<(&'a [u8], bool)>;

pub(crate) fn parts_of(body: &[BodySegment]) -> Parts<'_> {
    body.iter()
        .map(|segment| (&segment.bytes[..], segment.dot_safe))
        .collect()
}

/// One message, checked against the server's extensions and planned for the wire.
pub(crate) struct Prepared<'a> {
    envelope: &'a Envelope,
    plan: WirePlan<'a>,
    size: u64,
    smtputf8: bool,
}

/// The error for a message of a batch that was never started because the session failed first.
fn not_attempted() -> Error {
    Error::ConnectionLost {
        stage: Stage::MailFrom,
        outcome_unknown: false,
    }
}

fn prepare<'a>(
    envelope: &'a Envelope,
    parts: Parts<'a>,
    extensions: &Extensions,
    chunking: bool,
) -> Result<Prepared<'a>, Error> {
    envelope.validate()?;
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
    Ok(Prepared {
        envelope,
        plan,
        size,
        smtputf8,
    })
}

/// Appends MAIL FROM, every RCPT TO and DATA for one message (one pipelined group).
fn write_group(out: &mut Vec<u8>, message: &Prepared<'_>, extensions: &Extensions) {
    message
        .envelope
        .write_mail_from(out, extensions, message.size, message.smtputf8);
    for recipient in &message.envelope.recipients {
        message.envelope.write_rcpt_to(out, recipient, extensions);
    }
    out.extend_from_slice(b"DATA\r\n");
}

/// Attributes the replies to the recipients. `data` is the data-phase reply, present when at least
/// one recipient was accepted.
fn attribute(envelope: &Envelope, rcpt_replies: Vec<Reply>, data: Option<Reply>) -> Delivery {
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
    Delivery { recipients, data }
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
        self.run_batch(vec![(envelope, parts_of(body))])
            .await
            .pop()
            .flatten()
            .unwrap_or_else(|| Err(not_attempted()))
    }

    /// [`Connection::send`] for content in one buffer (scanned: normalised and dot-stuffed).
    pub async fn send_raw(&mut self, envelope: &Envelope, body: &[u8]) -> Result<Delivery, Error> {
        self.run_batch(vec![(envelope, vec![(body, false)])])
            .await
            .pop()
            .flatten()
            .unwrap_or_else(|| Err(not_attempted()))
    }

    /// Sends several messages, pipelining each message's content with the next message's commands
    /// (one round trip per message). One result per message, in order; a message after a session
    /// failure is not attempted and gets `ConnectionLost` (nothing of it was sent).
    pub async fn send_batch(
        &mut self,
        messages: &[(&Envelope, &[BodySegment])],
    ) -> Vec<Result<Delivery, Error>> {
        let items = messages
            .iter()
            .map(|(envelope, body)| (*envelope, parts_of(body)))
            .collect();
        self.run_batch(items)
            .await
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(not_attempted())))
            .collect()
    }

    /// The batch engine: `None` marks a message that was not attempted (the pool retries those on
    /// another session).
    pub(crate) async fn run_batch<'a>(
        &mut self,
        items: Vec<(&'a Envelope, Parts<'a>)>,
    ) -> Vec<Option<Result<Delivery, Error>>> {
        let mut results: Vec<Option<Result<Delivery, Error>>> =
            items.iter().map(|_| None).collect();
        self.acknowledged_in_transaction = 0;
        let extensions = self.extensions().clone();
        let chunking = self.use_chunking && extensions.chunking;
        let mut ready = Vec::with_capacity(items.len());
        for (index, (envelope, parts)) in items.into_iter().enumerate() {
            match prepare(envelope, parts, &extensions, chunking) {
                Ok(message) => ready.push((index, message)),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        if ready.is_empty() || !self.is_usable() {
            return results;
        }
        self.last_used = Instant::now();
        if extensions.pipelining && !chunking {
            self.pipelined_batch(&ready, &extensions, &mut results)
                .await;
        } else {
            for (index, message) in &ready {
                self.acknowledged_in_transaction = 0;
                let result = if extensions.pipelining {
                    self.pipelined_bdat(message, &extensions).await
                } else {
                    self.lockstep(message, &extensions, chunking).await
                };
                if result.is_ok() {
                    self.transactions += 1;
                }
                results[*index] = Some(result);
                if !self.is_usable() {
                    break;
                }
            }
        }
        self.last_used = Instant::now();
        results
    }

    /// RFC 2920 with DATA: the first group is MAIL + RCPTs + DATA; every later group is the previous
    /// message's content + `.` + this message's MAIL + RCPTs + DATA.
    async fn pipelined_batch(
        &mut self,
        ready: &[(usize, Prepared<'_>)],
        extensions: &Extensions,
        results: &mut [Option<Result<Delivery, Error>>],
    ) {
        let timeouts = *self.timeouts();
        let mut group = std::mem::take(&mut self.wbuf);
        group.clear();
        write_group(&mut group, &ready[0].1, extensions);
        if let Err(error) = self
            .write_command(&group, Stage::MailFrom, timeouts.mail)
            .await
        {
            results[ready[0].0] = Some(Err(error));
            self.wbuf = group;
            return;
        }
        for (k, (index, message)) in ready.iter().enumerate() {
            self.acknowledged_in_transaction = 0;
            group.clear();
            if let Some((_, following)) = ready.get(k + 1) {
                write_group(&mut group, following, extensions);
            }
            let result = self.pipelined_one(message, &group).await;
            if result.is_ok() {
                self.transactions += 1;
            }
            results[*index] = Some(result);
            if !self.is_usable() {
                break;
            }
        }
        self.wbuf = group;
    }

    /// Reads the replies to one message's group, sends its content (or ends the transaction), and
    /// writes `next` (the following message's group) in the same write. When the session is still
    /// usable on return, `next` has been written.
    async fn pipelined_one(
        &mut self,
        message: &Prepared<'_>,
        next: &[u8],
    ) -> Result<Delivery, Error> {
        let timeouts = *self.timeouts();
        let mail = self.read_reply(Stage::MailFrom, timeouts.mail).await?;
        self.check_closing(Stage::MailFrom, &mail)?;
        let mut rcpt_replies = Vec::with_capacity(message.envelope.recipients.len());
        for _ in &message.envelope.recipients {
            let reply = self.read_reply(Stage::RcptTo, timeouts.rcpt).await?;
            self.check_closing(Stage::RcptTo, &reply)?;
            rcpt_replies.push(reply);
        }
        let data = self.read_reply(Stage::Data, timeouts.data_init).await?;
        self.check_closing(Stage::Data, &data)?;
        let accepted = mail.is_positive() && rcpt_replies.iter().any(Reply::is_positive);

        if data.code == 354 && accepted {
            self.write_content(&message.plan, next, timeouts.data_block)
                .await?;
            let end = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
            self.check_closing(Stage::DataEnd, &end)?;
            return Ok(attribute(message.envelope, rcpt_replies, Some(end)));
        }

        // The transaction is open (or never started): end it before the next group. RFC 2920 §3.1
        // says a server must refuse DATA without a valid recipient; one that sends 354 anyway gets
        // an empty message, which it cannot deliver, then RSET.
        let mut slices = Vec::with_capacity(3);
        if data.code == 354 {
            slices.push(IoSlice::new(b".\r\n"));
        }
        slices.push(IoSlice::new(b"RSET\r\n"));
        if !next.is_empty() {
            slices.push(IoSlice::new(next));
        }
        self.write_vectored_all(&mut slices, Stage::Rset, timeouts.command)
            .await?;
        if data.code == 354 {
            let end = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
            self.check_closing(Stage::DataEnd, &end)?;
        }
        self.read_rset_reply().await?;
        if !mail.is_positive() {
            return Err(Error::Rejected {
                stage: Stage::MailFrom,
                reply: mail,
            });
        }
        Ok(attribute(
            message.envelope,
            rcpt_replies,
            accepted.then_some(data),
        ))
    }

    /// RFC 2920 + RFC 3030: MAIL + RCPTs + `BDAT size LAST` + the content in one write.
    async fn pipelined_bdat(
        &mut self,
        message: &Prepared<'_>,
        extensions: &Extensions,
    ) -> Result<Delivery, Error> {
        let timeouts = *self.timeouts();
        let mut commands = std::mem::take(&mut self.wbuf);
        commands.clear();
        message
            .envelope
            .write_mail_from(&mut commands, extensions, message.size, message.smtputf8);
        for recipient in &message.envelope.recipients {
            message
                .envelope
                .write_rcpt_to(&mut commands, recipient, extensions);
        }
        commands.extend_from_slice(format!("BDAT {} LAST\r\n", message.size).as_bytes());
        let mut slices = Vec::with_capacity(message.plan.slices.len() + 1);
        slices.push(IoSlice::new(&commands));
        slices.extend(message.plan.slices.iter().map(|s| IoSlice::new(s)));
        let written = self
            .write_vectored_all(&mut slices, Stage::MailFrom, timeouts.data_block)
            .await;
        drop(slices);
        self.wbuf = commands;
        written?;

        let mail = self.read_reply(Stage::MailFrom, timeouts.mail).await?;
        self.check_closing(Stage::MailFrom, &mail)?;
        let mut rcpt_replies = Vec::with_capacity(message.envelope.recipients.len());
        for _ in &message.envelope.recipients {
            let reply = self.read_reply(Stage::RcptTo, timeouts.rcpt).await?;
            self.check_closing(Stage::RcptTo, &reply)?;
            rcpt_replies.push(reply);
        }
        // The final reply, or the refusal of BDAT when no recipient was accepted.
        let end = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
        self.check_closing(Stage::DataEnd, &end)?;
        if !end.is_positive() {
            self.rset().await?;
        }
        if !mail.is_positive() {
            return Err(Error::Rejected {
                stage: Stage::MailFrom,
                reply: mail,
            });
        }
        let accepted = rcpt_replies.iter().any(Reply::is_positive);
        Ok(attribute(
            message.envelope,
            rcpt_replies,
            accepted.then_some(end),
        ))
    }

    /// Without PIPELINING: one command, one reply (RFC 5321 §4.3).
    async fn lockstep(
        &mut self,
        message: &Prepared<'_>,
        extensions: &Extensions,
        chunking: bool,
    ) -> Result<Delivery, Error> {
        let timeouts = *self.timeouts();
        let envelope = message.envelope;
        let mut line = std::mem::take(&mut self.wbuf);
        line.clear();
        envelope.write_mail_from(&mut line, extensions, message.size, message.smtputf8);
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
            envelope.write_rcpt_to(&mut line, recipient, extensions);
            let written = self
                .write_command(&line, Stage::RcptTo, timeouts.rcpt)
                .await;
            self.wbuf = line;
            written?;
            let reply = self.read_reply(Stage::RcptTo, timeouts.rcpt).await?;
            self.check_closing(Stage::RcptTo, &reply)?;
            rcpt_replies.push(reply);
        }
        if !rcpt_replies.iter().any(Reply::is_positive) {
            self.rset().await?;
            return Ok(attribute(envelope, rcpt_replies, None));
        }

        let data = if chunking {
            let command = format!("BDAT {} LAST\r\n", message.size);
            let mut slices = Vec::with_capacity(message.plan.slices.len() + 1);
            slices.push(IoSlice::new(command.as_bytes()));
            slices.extend(message.plan.slices.iter().map(|s| IoSlice::new(s)));
            self.write_vectored_all(&mut slices, Stage::DataBlock, timeouts.data_block)
                .await?;
            let end = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
            self.check_closing(Stage::DataEnd, &end)?;
            if !end.is_positive() {
                self.rset().await?;
            }
            end
        } else {
            self.write_command(b"DATA\r\n", Stage::Data, timeouts.data_init)
                .await?;
            let reply = self.read_reply(Stage::Data, timeouts.data_init).await?;
            self.check_closing(Stage::Data, &reply)?;
            if reply.code == 354 {
                self.write_content(&message.plan, &[], timeouts.data_block)
                    .await?;
                let end = self.read_reply(Stage::DataEnd, timeouts.data_end).await?;
                self.check_closing(Stage::DataEnd, &end)?;
                end
            } else {
                self.rset().await?;
                reply
            }
        };
        Ok(attribute(envelope, rcpt_replies, Some(data)))
    }

    /// Sends the content, the terminating `.` line (RFC 5321 §4.1.1.4) and `next` (the following
    /// pipelined group, possibly empty) in one `writev` stream.
    async fn write_content(
        &mut self,
        plan: &WirePlan<'_>,
        next: &[u8],
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let mut slices = Vec::with_capacity(plan.slices.len() + 2);
        slices.extend(plan.slices.iter().map(|s| IoSlice::new(s)));
        slices.push(IoSlice::new(b".\r\n"));
        if !next.is_empty() {
            slices.push(IoSlice::new(next));
        }
        self.write_vectored_all(&mut slices, Stage::DataBlock, timeout)
            .await
    }
}
