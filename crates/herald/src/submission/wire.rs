//! The bytes of a session: command lines, the DATA stream and BDAT chunks, each with its limit, and the
//! replies, written in order and flushed only when the client has nothing more queued (RFC 2920 pipelining).
//!
//! SMTP smuggling (CVE-2023-51764 and kin) lives here: only `<CRLF>.<CRLF>` ends DATA, so `\n.\n` or
//! `\r.\r` is message content, and a message with bare CR or LF is refused after it ends
//! ([`check_lines`]), never split into "a message and some commands".

use std::{sync::LazyLock, time::Duration};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
    time::Instant,
};

/// RFC 5321 §4.5.3.1.4 and .6: a text line, and a command line here too, is at most 1000 octets with its
/// CRLF (AUTH responses included).
pub const MAX_LINE: usize = 1000;

/// The CRLF searcher, built once (building one per line was measurable on small messages).
static CRLF: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n"));

/// Why a session's input ended.
#[derive(Debug)]
pub enum End {
    /// The client closed the connection (or reset it).
    Closed,
    /// No complete command, or no whole message, within the timeout.
    Timeout,
    /// The server is stopping and the session was idle.
    Stopping,
}

/// A command line, as read.
pub enum Line {
    /// With its CRLF.
    Complete(Vec<u8>),
    /// Longer than [`MAX_LINE`]; its bytes were discarded up to its end.
    TooLong,
    /// Ended by LF alone (RFC 5321 §2.3.8: lines end with CRLF).
    BareLf,
}

/// What DATA received, unstuffed, up to the end marker.
pub struct Data {
    pub bytes: Vec<u8>,
    /// The message was larger than the limit; `bytes` holds only its beginning.
    pub oversized: bool,
}

/// The input and output buffers of one connection over `S` (TCP, or TLS over TCP).
pub struct Wire<S> {
    pub stream: S,
    input: BytesMut,
    output: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            input: BytesMut::with_capacity(4096),
            output: Vec::with_capacity(512),
        }
    }

    /// Whether the client sent bytes not read yet (after STARTTLS, that is an injection attempt).
    pub fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    pub fn discard_input(&mut self) {
        self.input.clear();
    }

    /// Queues one reply line (`code` and text, without CRLF).
    pub fn reply(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        self.stream.flush().await
    }

    /// Reads more input. Replies queued so far go out first: the client may be waiting for them before it
    /// sends more. `stop`, when given, ends the wait when the server stops.
    async fn fill(
        &mut self,
        deadline: Instant,
        stop: Option<&mut watch::Receiver<bool>>,
    ) -> Result<(), End> {
        self.flush().await.map_err(|_| End::Closed)?;
        if self.input.capacity() - self.input.len() < 2048 {
            self.input.reserve(16 * 1024);
        }
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input));
        let result = match stop {
            Some(stop) => tokio::select! {
                result = read => result,
                _ = stop.wait_for(|stop| *stop) => return Err(End::Stopping),
            },
            None => read.await,
        };
        match result {
            Err(_) => Err(End::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => Err(End::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The next command line, within `timeout`.
    pub async fn line(
        &mut self,
        timeout: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Line, End> {
        let deadline = Instant::now() + timeout;
        let mut too_long = false;
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.input) {
                let line = self.input.split_to(at + 1);
                if too_long || line.len() > MAX_LINE {
                    return Ok(Line::TooLong);
                }
                if line.len() < 2 || line[line.len() - 2] != b'\r' {
                    return Ok(Line::BareLf);
                }
                return Ok(Line::Complete(line.to_vec()));
            }
            if self.input.len() > MAX_LINE {
                // Kept no further: the rest of this line is read and dropped.
                too_long = true;
                self.input.clear();
            }
            self.fill(deadline, Some(stop)).await?;
        }
    }

    /// The message after `354`, dot-unstuffed (RFC 5321 §4.5.2), up to the line that is a single dot.
    /// At most `limit` bytes are kept; the rest is read and dropped, so that the session stays in step.
    pub async fn data(&mut self, limit: usize, timeout: Duration) -> Result<Data, End> {
        let deadline = Instant::now() + timeout;
        let mut data = Data {
            bytes: Vec::with_capacity(limit.min(64 * 1024)),
            oversized: false,
        };
        let mut line_start = true;
        loop {
            while let Some(at) = CRLF.find(&self.input) {
                let segment = &self.input[..at];
                if line_start && segment == b"." {
                    self.input.advance(at + 2);
                    return Ok(data);
                }
                let content = match (line_start, segment.first()) {
                    (true, Some(b'.')) => &segment[1..],
                    _ => segment,
                };
                if data.bytes.len() + content.len() + 2 > limit {
                    data.oversized = true;
                } else if !data.oversized {
                    data.bytes.extend_from_slice(content);
                    data.bytes.extend_from_slice(b"\r\n");
                }
                self.input.advance(at + 2);
                line_start = true;
            }
            if self.input.len() > MAX_LINE {
                // A long line without its CRLF yet: keep its beginning in the message (refused later by
                // [`check_lines`]) and only its last byte, which may be the CR of the CRLF.
                let take = self.input.len() - 1;
                let chunk = self.input.split_to(take);
                let content = match (line_start, chunk.first()) {
                    (true, Some(b'.')) => &chunk[1..],
                    _ => &chunk[..],
                };
                if data.bytes.len() + content.len() > limit {
                    data.oversized = true;
                } else if !data.oversized {
                    data.bytes.extend_from_slice(content);
                }
                line_start = false;
            }
            self.fill(deadline, None).await?;
        }
    }

    /// Reads a BDAT chunk of `size` octets (RFC 3030), appending it to `sink` when given.
    pub async fn chunk(
        &mut self,
        mut size: usize,
        mut sink: Option<&mut Vec<u8>>,
        timeout: Duration,
    ) -> Result<(), End> {
        let deadline = Instant::now() + timeout;
        loop {
            let take = size.min(self.input.len());
            if let Some(sink) = sink.as_deref_mut() {
                sink.extend_from_slice(&self.input[..take]);
            }
            self.input.advance(take);
            size -= take;
            if size == 0 {
                return Ok(());
            }
            self.fill(deadline, None).await?;
        }
    }
}

/// What is wrong with a message's lines, with the 1-based line number.
#[derive(Debug, PartialEq, Eq)]
pub enum LineFault {
    /// A CR or LF that is not part of a CRLF.
    Bare { line: usize },
    /// A line longer than [`MAX_LINE`] with its CRLF.
    TooLong { line: usize },
}

/// Checks that every line of `bytes` ends with CRLF, has no other CR or LF and is at most [`MAX_LINE`]
/// octets. Those are what an SMTP relay downstream would read as line ends or cut; a message that has them
/// is refused rather than normalised, so no ambiguity reaches the relay.
pub fn check_lines(bytes: &[u8]) -> Result<(), LineFault> {
    let mut start = 0;
    let mut line = 1;
    for at in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        match bytes[at] {
            b'\r' if bytes.get(at + 1) == Some(&b'\n') => {}
            b'\n' if at > 0 && bytes[at - 1] == b'\r' => {
                if at + 1 - start > MAX_LINE {
                    return Err(LineFault::TooLong { line });
                }
                start = at + 1;
                line += 1;
            }
            _ => return Err(LineFault::Bare { line }),
        }
    }
    if bytes.len() - start > MAX_LINE {
        return Err(LineFault::TooLong { line });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn data_of(sent: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(sent).await.unwrap();
        drop(client);
        let mut wire = Wire::new(server);
        let data = wire.data(1 << 20, Duration::from_secs(5)).await.ok();
        (data.map(|d| d.bytes), wire.input.to_vec())
    }

    #[tokio::test]
    async fn only_crlf_dot_crlf_ends_data() {
        let (data, rest) =
            data_of(b"a\r\n..b\r\nx\n.\nMAIL FROM:<e@x>\r\nc\r\n.\r\nQUIT\r\n").await;
        assert_eq!(
            data.unwrap(),
            b"a\r\n.b\r\nx\n.\nMAIL FROM:<e@x>\r\nc\r\n".to_vec()
        );
        assert_eq!(rest, b"QUIT\r\n");
        let (data, _) = data_of(b"x\r.\rMAIL FROM:<e@x>\r\n").await;
        assert!(data.is_none(), "\\r.\\r ended DATA");
    }

    #[tokio::test]
    async fn an_empty_message_and_a_long_line_are_read_whole() {
        let (data, _) = data_of(b".\r\n").await;
        assert_eq!(data.unwrap(), b"");
        let long = format!(".{}\r\n.\r\n", "y".repeat(5000));
        let (data, _) = data_of(long.as_bytes()).await;
        let data = data.unwrap();
        assert_eq!(data.len(), 5002);
        assert_eq!(check_lines(&data), Err(LineFault::TooLong { line: 1 }));
    }

    #[test]
    fn bare_line_ends_are_found_with_their_line() {
        assert_eq!(check_lines(b"a\r\nb\r\n"), Ok(()));
        assert_eq!(
            check_lines(b"a\r\nb\nc\r\n"),
            Err(LineFault::Bare { line: 2 })
        );
        assert_eq!(check_lines(b"a\rb\r\n"), Err(LineFault::Bare { line: 1 }));
        assert_eq!(check_lines(b"a\r\n\r"), Err(LineFault::Bare { line: 2 }));
        let line = format!("{}\r\n", "z".repeat(998));
        assert_eq!(check_lines(line.as_bytes()), Ok(()));
        let line = format!("{}\r\n", "z".repeat(999));
        assert_eq!(
            check_lines(line.as_bytes()),
            Err(LineFault::TooLong { line: 1 })
        );
    }
}
