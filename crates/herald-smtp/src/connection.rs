//! One SMTP session: connect, greeting, EHLO, STARTTLS or implicit TLS, AUTH; then the buffered
//! reading of replies and the writing of commands and content that every stage uses.

use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use crate::{
    config::{RelayConfig, Security, Timeouts},
    ehlo::Extensions,
    error::{Error, Stage},
    reply::{self, Reply},
    tls,
};

/// A prepared relay: its configuration plus the TLS client configuration built once. Cheap to clone
/// and share between tasks; [`Client::connect`] opens a ready-to-send [`Connection`].
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: RelayConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// Prepares a client; loads trust roots (and the extra CA file) unless security is `None`.
    pub fn new(config: RelayConfig) -> Result<Self, Error> {
        let tls = match config.security {
            Security::None => None,
            _ => Some(tls::client_config(&config)?),
        };
        Ok(Client {
            inner: Arc::new(ClientInner { config, tls }),
        })
    }

    /// The relay configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    /// Opens a session: TCP, (implicit TLS), greeting, EHLO, (STARTTLS + EHLO), (AUTH).
    pub async fn connect(&self) -> Result<Connection, Error> {
        let config = &self.inner.config;
        let timeouts = config.timeouts;
        let tcp = tokio::time::timeout(
            timeouts.connect,
            TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        .map_err(|_| Error::Timeout {
            stage: Stage::Connect,
        })?
        .map_err(|source| Error::Connect {
            host: config.host.clone(),
            port: config.port,
            source,
        })?;
        // Pipelined command groups and replies are small: do not let Nagle hold them back.
        tcp.set_nodelay(true).map_err(|source| Error::Io {
            stage: Stage::Connect,
            source,
        })?;
        let peer = tcp.peer_addr().map_err(|source| Error::Io {
            stage: Stage::Connect,
            source,
        })?;
        let stream = if config.security == Security::ImplicitTls {
            Stream::Tls(Box::new(self.handshake(tcp).await?))
        } else {
            Stream::Plain(tcp)
        };
        let mut connection = Connection::new(stream, peer, config.host.clone(), timeouts);
        connection.greeting().await?;
        connection.ehlo(&config.helo_name).await?;

        let wants_starttls = match config.security {
            Security::StartTlsRequired => true,
            Security::StartTlsOpportunistic => connection.extensions.starttls,
            Security::None | Security::ImplicitTls => false,
        };
        if wants_starttls {
            if !connection.extensions.starttls {
                connection.quit().await;
                return Err(Error::StartTlsUnavailable {
                    host: config.host.clone(),
                });
            }
            connection.starttls(self).await?;
            connection.ehlo(&config.helo_name).await?;
        }

        if let Some(credentials) = &config.credentials {
            let loopback_ok = config.allow_plaintext_auth_on_loopback && peer.ip().is_loopback();
            if !connection.is_tls() && !loopback_ok {
                connection.quit().await;
                return Err(Error::AuthWithoutTls {
                    host: config.host.clone(),
                });
            }
            connection
                .authenticate(credentials, config.auth_mechanism)
                .await?;
        }
        connection.use_chunking = config.use_chunking;
        tracing::debug!(host = %config.host, %peer, tls = connection.is_tls(), "SMTP session ready");
        Ok(connection)
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Error> {
        let config = &self.inner.config;
        let tls = self
            .inner
            .tls
            .clone()
            .ok_or_else(|| Error::TlsConfig("TLS is not configured".to_string()))?;
        let name = config.tls_server_name.as_deref().unwrap_or(&config.host);
        tokio::time::timeout(config.timeouts.connect, tls::handshake(tls, name, tcp))
            .await
            .map_err(|_| Error::Timeout {
                stage: Stage::TlsHandshake,
            })?
    }
}

/// The byte stream under a session: plain TCP or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while STARTTLS swaps the stream, or after a failed upgrade.
    Closed,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// An open SMTP session, ready for transactions ([`Connection::send`]). Not `Clone`: one task
/// drives it at a time; share many through a [`crate::Pool`].
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    /// Bytes read but not yet consumed are `rbuf[rpos..rend]`.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Command bytes being assembled for the next write.
    pub(crate) wbuf: Vec<u8>,
    extensions: Extensions,
    timeouts: Timeouts,
    host: String,
    peer: SocketAddr,
    tls: bool,
    pub(crate) use_chunking: bool,
    created: Instant,
    pub(crate) last_used: Instant,
    /// Completed transactions (for the pool's messages-per-connection limit).
    pub(crate) transactions: u32,
    /// Set when the session can no longer be used (421, timeout, I/O error, protocol error).
    broken: bool,
    /// Positive (2xx/3xx) replies read since the current transaction began: 0 after a failure
    /// means nothing of the transaction was acknowledged, so it can be retried on another session
    /// without risk of duplication.
    pub(crate) acknowledged_in_transaction: usize,
    /// What AUTH sent that must never come back out: a relay that echoes the command (or the password)
    /// in a reply would otherwise put the credential into errors, logs and the stored delivery history.
    /// Every reply read after AUTH is redacted of these.
    pub(crate) secrets: Vec<String>,
}

impl Connection {
    fn new(stream: Stream, peer: SocketAddr, host: String, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        let tls = matches!(stream, Stream::Tls(_));
        Connection {
            stream,
            rbuf: vec![0; 16 * 1024],
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(1024),
            extensions: Extensions::default(),
            timeouts,
            host,
            peer,
            tls,
            use_chunking: false,
            created: now,
            last_used: now,
            transactions: 0,
            broken: false,
            acknowledged_in_transaction: 0,
            secrets: Vec::new(),
        }
    }

    /// What the server offered in its (last) EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    pub(crate) fn set_extensions(&mut self, extensions: Extensions) {
        self.extensions = extensions;
    }

    /// The relay host name this session was opened to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The peer's socket address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// True when the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// True when the session can carry another transaction.
    pub fn is_usable(&self) -> bool {
        !self.broken && !matches!(self.stream, Stream::Closed)
    }

    /// Completed transactions on this session.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Time since the session was opened.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    pub(crate) fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Checks, without a round trip, that the peer has not closed an idle session: a non-blocking
    /// read must find nothing. EOF, an error or unexpected bytes (a 421 timeout notice) mean the
    /// session is dead. This replaces the NOOP other clients send before each reuse.
    pub(crate) fn still_open(&mut self) -> bool {
        if !self.is_usable() || self.rpos != self.rend {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut probe = [0u8; 64];
        let mut buf = ReadBuf::new(&mut probe);
        match Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                self.broken = true;
                false
            }
        }
    }

    async fn greeting(&mut self) -> Result<(), Error> {
        let reply = self
            .read_reply(Stage::Greeting, self.timeouts.greeting)
            .await?;
        self.check_closing(Stage::Greeting, &reply)?;
        if reply.code != 220 {
            self.broken = true;
            return Err(Error::Rejected {
                stage: Stage::Greeting,
                reply,
            });
        }
        Ok(())
    }

    async fn starttls(&mut self, client: &Client) -> Result<(), Error> {
        let timeout = self.timeouts.command;
        self.write_command(b"STARTTLS\r\n", Stage::StartTls, timeout)
            .await?;
        let reply = self.read_reply(Stage::StartTls, timeout).await?;
        self.check_closing(Stage::StartTls, &reply)?;
        if reply.code != 220 {
            return Err(Error::Rejected {
                stage: Stage::StartTls,
                reply,
            });
        }
        // RFC 3207 §6: anything the server sent after its 220 arrived in plaintext and could have
        // been injected; a correct server sends nothing before the handshake.
        if self.rpos != self.rend {
            self.broken = true;
            return Err(Error::Protocol {
                stage: Stage::StartTls,
                detail: "data after the STARTTLS reply".to_string(),
            });
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(Error::Protocol {
                stage: Stage::StartTls,
                detail: "STARTTLS on a TLS session".to_string(),
            });
        };
        self.broken = true;
        let tls = client.handshake(tcp).await?;
        self.stream = Stream::Tls(Box::new(tls));
        self.tls = true;
        self.broken = false;
        Ok(())
    }

    /// Turns a 421 into the error it is: the server is closing the session (RFC 5321 §3.8).
    pub(crate) fn check_closing(&mut self, stage: Stage, reply: &Reply) -> Result<(), Error> {
        if reply.code == 421 {
            self.broken = true;
            return Err(Error::Rejected {
                stage,
                reply: reply.clone(),
            });
        }
        Ok(())
    }

    /// Reads the next complete reply, waiting at most `timeout`.
    pub(crate) async fn read_reply(
        &mut self,
        stage: Stage,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let len = self.next_reply_len(stage, timeout).await?;
        let mut reply = Reply::parse(&self.rbuf[self.rpos..self.rpos + len]);
        self.consume(len, &reply);
        self.redact(&mut reply);
        Ok(reply)
    }

    /// Like [`Self::read_reply`], also returning the raw bytes (for EHLO parsing).
    pub(crate) async fn read_reply_raw(
        &mut self,
        stage: Stage,
        timeout: Duration,
    ) -> Result<(Reply, Vec<u8>), Error> {
        let len = self.next_reply_len(stage, timeout).await?;
        let raw = self.rbuf[self.rpos..self.rpos + len].to_vec();
        let mut reply = Reply::parse(&raw);
        self.consume(len, &reply);
        self.redact(&mut reply);
        Ok((reply, raw))
    }

    fn redact(&self, reply: &mut Reply) {
        if !self.secrets.is_empty() {
            reply.text = crate::auth::redact(&reply.text, &self.secrets);
        }
    }

    fn consume(&mut self, len: usize, reply: &Reply) {
        self.rpos += len;
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
        if reply.code < 400 {
            self.acknowledged_in_transaction += 1;
        }
    }

    async fn next_reply_len(&mut self, stage: Stage, timeout: Duration) -> Result<usize, Error> {
        if let Some(len) = self.framed(stage)? {
            return Ok(len);
        }
        match tokio::time::timeout(timeout, self.fill_until_reply(stage)).await {
            Ok(result) => result,
            Err(_) => {
                self.broken = true;
                Err(Error::Timeout { stage })
            }
        }
    }

    fn framed(&mut self, stage: Stage) -> Result<Option<usize>, Error> {
        reply::frame(&self.rbuf[self.rpos..self.rend]).map_err(|detail| {
            self.broken = true;
            Error::Protocol { stage, detail }
        })
    }

    async fn fill_until_reply(&mut self, stage: Stage) -> Result<usize, Error> {
        loop {
            if self.rend == self.rbuf.len() {
                if self.rpos > 0 {
                    self.rbuf.copy_within(self.rpos..self.rend, 0);
                    self.rend -= self.rpos;
                    self.rpos = 0;
                } else {
                    let grown = self.rbuf.len() * 2;
                    self.rbuf.resize(grown, 0);
                }
            }
            let read = self.stream.read(&mut self.rbuf[self.rend..]).await;
            match read {
                Ok(0) => {
                    self.broken = true;
                    return Err(Error::ConnectionLost {
                        stage,
                        outcome_unknown: stage == Stage::DataEnd,
                    });
                }
                Ok(n) => self.rend += n,
                Err(error) => {
                    self.broken = true;
                    return Err(lost_or_io(stage, error));
                }
            }
            if let Some(len) = self.framed(stage)? {
                return Ok(len);
            }
        }
    }

    /// Writes one command (or a pipelined group of them) in one write.
    pub(crate) async fn write_command(
        &mut self,
        bytes: &[u8],
        stage: Stage,
        timeout: Duration,
    ) -> Result<(), Error> {
        let mut slices = [IoSlice::new(bytes)];
        self.write_vectored_all(&mut slices, stage, timeout).await
    }

    /// Writes all of `slices` with as few system calls as the kernel allows (`writev`); each call
    /// must make progress within `timeout` (RFC 5321 §4.5.3.2.5 data block timeout).
    pub(crate) async fn write_vectored_all(
        &mut self,
        mut slices: &mut [IoSlice<'_>],
        stage: Stage,
        timeout: Duration,
    ) -> Result<(), Error> {
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            // IOV_MAX is 1024 on Linux; stay well below it.
            let batch = slices.len().min(512);
            let written =
                match tokio::time::timeout(timeout, self.stream.write_vectored(&slices[..batch]))
                    .await
                {
                    Err(_) => {
                        self.broken = true;
                        return Err(Error::Timeout { stage });
                    }
                    Ok(Err(error)) => {
                        self.broken = true;
                        return Err(lost_or_io(stage, error));
                    }
                    Ok(Ok(0)) => {
                        self.broken = true;
                        return Err(Error::ConnectionLost {
                            stage,
                            outcome_unknown: false,
                        });
                    }
                    Ok(Ok(n)) => n,
                };
            IoSlice::advance_slices(&mut slices, written);
        }
        if self.tls {
            // rustls buffers records until flushed.
            match tokio::time::timeout(timeout, self.stream.flush()).await {
                Err(_) => {
                    self.broken = true;
                    return Err(Error::Timeout { stage });
                }
                Ok(Err(error)) => {
                    self.broken = true;
                    return Err(lost_or_io(stage, error));
                }
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    /// Ends the session politely: QUIT, read the 221 (bounded by the command timeout, at most
    /// 5 s), close, and wait (at most 1 s) for the server to close its side. Failures are
    /// irrelevant at this point.
    ///
    /// Waiting for the server's close keeps a pool's cap true from the relay's side too: a relay
    /// counts a connection until it has closed it, and a pool that opened the next session as soon
    /// as it had read the 221 could briefly hold one more connection at the relay than its cap.
    pub async fn quit(mut self) {
        let mut said_quit = false;
        if self.is_usable() {
            let timeout = self.timeouts.command.min(Duration::from_secs(5));
            if self
                .write_command(b"QUIT\r\n", Stage::Quit, timeout)
                .await
                .is_ok()
            {
                said_quit = self.read_reply(Stage::Quit, timeout).await.is_ok();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.stream.shutdown().await;
            if said_quit {
                // RFC 5321 §4.1.1.10: the server closes the channel after its 221.
                let mut rest = [0u8; 512];
                while matches!(self.stream.read(&mut rest).await, Ok(n) if n > 0) {}
            }
        })
        .await;
    }

    /// Resets the session after an incomplete transaction (RFC 5321 §4.1.1.5).
    pub(crate) async fn rset(&mut self) -> Result<(), Error> {
        let timeout = self.timeouts.command;
        self.write_command(b"RSET\r\n", Stage::Rset, timeout)
            .await?;
        self.read_rset_reply().await
    }

    /// Reads the reply to an RSET that was written (possibly pipelined with other commands).
    pub(crate) async fn read_rset_reply(&mut self) -> Result<(), Error> {
        let reply = self.read_reply(Stage::Rset, self.timeouts.command).await?;
        self.check_closing(Stage::Rset, &reply)?;
        if reply.code != 250 {
            self.broken = true;
            return Err(Error::Rejected {
                stage: Stage::Rset,
                reply,
            });
        }
        Ok(())
    }
}

/// A reset or broken pipe means the peer went away; anything else is reported as I/O.
fn lost_or_io(stage: Stage, error: io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => Error::ConnectionLost {
            stage,
            outcome_unknown: stage == Stage::DataEnd,
        },
        _ => Error::Io {
            stage,
            source: error,
        },
    }
}
