//! The capture / fault server.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::AbortHandle,
};
use tokio_rustls::TlsAcceptor;

/// The stage at which a [`Fault`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Instead of the 220 greeting.
    Greeting,
    /// In reply to EHLO (a 5xx other than 554 makes the client fall back to HELO).
    Ehlo,
    /// In reply to STARTTLS.
    StartTls,
    /// In reply to the (last step of) AUTH.
    Auth,
    /// In reply to MAIL FROM.
    MailFrom,
    /// In reply to RCPT TO: for every recipient (`None`) or only this address.
    RcptTo(Option<String>),
    /// In reply to DATA (instead of 354) or to BDAT before reading the chunk.
    Data,
    /// After the whole content arrived, instead of the final reply.
    DataEnd,
    /// In reply to RSET.
    Rset,
}

/// What the server does at that stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer this reply line (e.g. `"450 4.2.1 mailbox busy"`); a 421 also closes the connection.
    Reply(String),
    /// Close the connection without answering.
    Drop,
    /// Never answer (the connection stays open until the client gives up).
    Stall,
    /// Wait this long, then answer this reply line (a slow relay: e.g. a content scan before the final 250).
    Delay(Duration, String),
    /// Answer this reply prefix followed by the client's last command line, as a careless relay that
    /// echoes what it was sent (an AUTH line, with the credential in it) in its error.
    Echo(String),
}

/// One scripted deviation. `connection` and `transaction` (0-based, counted over the server's
/// life) restrict it to one attempt; `None` matches all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub when: When,
    pub action: Action,
    pub connection: Option<usize>,
    pub transaction: Option<usize>,
}

impl Fault {
    /// A fault at `when` on every connection and transaction.
    pub fn new(when: When, action: Action) -> Self {
        Fault {
            when,
            action,
            connection: None,
            transaction: None,
        }
    }

    /// Shorthand: answer `reply` at `when`.
    pub fn reply(when: When, reply: &str) -> Self {
        Fault::new(when, Action::Reply(reply.to_string()))
    }

    /// Only on the connection with this index (0 = first accepted).
    pub fn on_connection(mut self, index: usize) -> Self {
        self.connection = Some(index);
        self
    }

    /// Only in the transaction with this index (0 = first MAIL FROM the server saw).
    pub fn on_transaction(mut self, index: usize) -> Self {
        self.transaction = Some(index);
        self
    }
}

/// What the server offers and how it misbehaves.
#[derive(Clone)]
pub struct ServerConfig {
    /// Answer EHLO (otherwise 502, so clients fall back to HELO and get no extensions).
    pub ehlo: bool,
    pub pipelining: bool,
    /// SIZE limit announced and enforced (`Some(0)`: SIZE offered without a limit).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub enhanced_status_codes: bool,
    pub dsn: bool,
    /// Offer STARTTLS with this configuration.
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// Speak TLS from the first byte (port 465 style).
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN LOGIN XOAUTH2 and accept this user with this password (or bearer token);
    /// MAIL FROM is refused (530) until authenticated.
    pub auth: Option<(String, String)>,
    pub faults: Vec<Fault>,
}

impl Default for ServerConfig {
    /// A modern relay: PIPELINING, SIZE without limit, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, DSN;
    /// no CHUNKING, TLS or AUTH.
    fn default() -> Self {
        ServerConfig {
            ehlo: true,
            pipelining: true,
            size: Some(0),
            eight_bit_mime: true,
            smtputf8: true,
            chunking: false,
            enhanced_status_codes: true,
            dsn: true,
            starttls: None,
            implicit_tls: None,
            auth: None,
            faults: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// Adds a fault to the script.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }
}

/// One transaction as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Index of the connection it arrived on.
    pub connection: usize,
    /// The MAIL FROM address (inside `<>`).
    pub mail_from: String,
    /// Everything after the `>` of MAIL FROM (parameters such as `SIZE=`).
    pub mail_params: String,
    /// The recipients the server accepted.
    pub recipients: Vec<String>,
    /// The content after undoing dot-stuffing (for BDAT: as received).
    pub content: Vec<u8>,
    /// The content bytes exactly as received (dot-stuffed for DATA), without the terminator.
    pub wire: Vec<u8>,
    /// True when sent with BDAT.
    pub bdat: bool,
    pub tls: bool,
    /// The user that authenticated on this connection.
    pub auth_user: Option<String>,
    /// What the server answered at the end of data.
    pub final_reply: String,
}

/// One read of client bytes: what arrived in one `read` on the server (one client write, when the
/// client wrote it at once and the server was waiting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRead {
    pub connection: usize,
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    transactions: Mutex<Vec<Transaction>>,
    reads: Mutex<Vec<ClientRead>>,
    commands: Mutex<Vec<(usize, String)>>,
    connections: AtomicUsize,
    transaction_count: AtomicUsize,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
    changed: Notify,
}

/// A running test server on 127.0.0.1; stops (and drops every connection) when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl TestServer {
    /// Starts a server on 127.0.0.1, port 0.
    pub async fn start(config: ServerConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let config = Arc::new(config);
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let id = accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let open = accept_shared.open.fetch_add(1, Ordering::SeqCst) + 1;
                accept_shared.peak_open.fetch_max(open, Ordering::SeqCst);
                let session = Session::new(id, config.clone(), accept_shared.clone());
                let task = tokio::spawn(session.run(tcp));
                let mut tasks = accept_shared.tasks.lock().unwrap();
                tasks.retain(|task| !task.is_finished());
                tasks.push(task.abort_handle());
            }
        })
        .abort_handle();
        TestServer {
            addr,
            shared,
            accept,
        }
    }

    /// The capture server with default extensions and no faults.
    pub async fn capture() -> TestServer {
        TestServer::start(ServerConfig::default()).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Completed transactions (content received), in order.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.shared.transactions.lock().unwrap().clone()
    }

    /// Every read of client bytes, in order.
    pub fn reads(&self) -> Vec<ClientRead> {
        self.shared.reads.lock().unwrap().clone()
    }

    /// Every command line (connection index, line without CRLF; AUTH lines included), in order.
    pub fn commands(&self) -> Vec<(usize, String)> {
        self.shared.commands.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> usize {
        self.shared.peak_open.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s, then panics) until `condition` holds; re-checked whenever the server
    /// records something.
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&TestServer) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let changed = self.shared.changed.notified();
            if condition(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                assert!(
                    condition(self),
                    "test server: timed out waiting until {what}"
                );
                return;
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Session {
    id: usize,
    config: Arc<ServerConfig>,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    tls: bool,
    auth_user: Option<String>,
    mail: Option<(String, String)>,
    recipients: Vec<String>,
    transaction: usize,
    bdat_content: Vec<u8>,
    /// The last command line read (for [`Action::Echo`]).
    last_line: String,
}

/// Why a session ended early.
enum End {
    Closed,
    Stall,
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Session {
    fn new(id: usize, config: Arc<ServerConfig>, shared: Arc<Shared>) -> Self {
        Session {
            id,
            config,
            shared,
            buf: Vec::new(),
            tls: false,
            auth_user: None,
            mail: None,
            recipients: Vec::new(),
            transaction: 0,
            bdat_content: Vec::new(),
            last_line: String::new(),
        }
    }

    async fn run(mut self, tcp: TcpStream) {
        let guard = OpenGuard(self.shared.clone());
        let mut io: Box<dyn Io> = match &self.config.implicit_tls {
            Some(tls) => match TlsAcceptor::from(tls.clone()).accept(tcp).await {
                Ok(stream) => {
                    self.tls = true;
                    Box::new(stream)
                }
                Err(_) => return,
            },
            None => Box::new(tcp),
        };
        if let Err(End::Stall) = self.serve(&mut io).await {
            std::future::pending::<()>().await;
        }
        // Counted closed before the client can see the close: a client that waits for it (as after QUIT)
        // and opens its next session at once must not find the old one still counted, or peaks would show
        // one session more than the client ever had.
        drop(guard);
        let _ = io.shutdown().await;
    }

    fn fault(&self, when: &When) -> Option<Action> {
        self.config
            .faults
            .iter()
            .find(|fault| {
                fault.when == *when
                    && fault.connection.is_none_or(|c| c == self.id)
                    && fault
                        .transaction
                        .is_none_or(|t| self.mail.is_some() && t == self.transaction)
            })
            .map(|fault| fault.action.clone())
    }

    /// Applies the scripted action for `when`, or sends `default`; returns the reply sent.
    async fn respond(
        &mut self,
        io: &mut Box<dyn Io>,
        when: When,
        default: &str,
    ) -> Result<String, End> {
        let reply = match self.fault(&when) {
            None => default.to_string(),
            Some(Action::Reply(reply)) => reply,
            Some(Action::Delay(wait, reply)) => {
                tokio::time::sleep(wait).await;
                reply
            }
            Some(Action::Drop) => return Err(End::Closed),
            Some(Action::Stall) => return Err(End::Stall),
            Some(Action::Echo(prefix)) => format!("{prefix}{}", self.last_line),
        };
        self.send(io, &reply).await?;
        if reply.starts_with("421") {
            return Err(End::Closed);
        }
        Ok(reply)
    }

    async fn send(&mut self, io: &mut Box<dyn Io>, reply: &str) -> Result<(), End> {
        let mut bytes = reply.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        io.write_all(&bytes).await.map_err(|_| End::Closed)?;
        io.flush().await.map_err(|_| End::Closed)
    }

    /// Reads more client bytes, recording the read.
    async fn fill(&mut self, io: &mut Box<dyn Io>) -> Result<(), End> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = io.read(&mut chunk).await.map_err(|_| End::Closed)?;
        if n == 0 {
            return Err(End::Closed);
        }
        chunk.truncate(n);
        self.buf.extend_from_slice(&chunk);
        self.shared.reads.lock().unwrap().push(ClientRead {
            connection: self.id,
            bytes: chunk,
        });
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn read_line(&mut self, io: &mut Box<dyn Io>) -> Result<String, End> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                self.shared
                    .commands
                    .lock()
                    .unwrap()
                    .push((self.id, line.clone()));
                self.last_line.clone_from(&line);
                return Ok(line);
            }
            self.fill(io).await?;
        }
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec!["testkit.local greets you".to_string()];
        let config = &self.config;
        if config.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(size) = config.size {
            lines.push(if size > 0 {
                format!("SIZE {size}")
            } else {
                "SIZE".into()
            });
        }
        if config.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        if config.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if config.chunking {
            lines.push("CHUNKING".into());
        }
        if config.starttls.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if config.auth.is_some() {
            lines.push("AUTH PLAIN LOGIN XOAUTH2".into());
        }
        if config.enhanced_status_codes {
            lines.push("ENHANCEDSTATUSCODES".into());
        }
        if config.dsn {
            lines.push("DSN".into());
        }
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| format!("250{}{line}", if i == last { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    async fn serve(&mut self, io: &mut Box<dyn Io>) -> Result<(), End> {
        self.respond(io, When::Greeting, "220 testkit.local ESMTP")
            .await?;
        loop {
            let line = self.read_line(io).await?;
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or_default().to_string();
            match verb.as_str() {
                "EHLO" if self.config.ehlo => {
                    let reply = self.ehlo_reply();
                    self.respond(io, When::Ehlo, &reply).await?;
                }
                "EHLO" => {
                    self.send(io, "502 5.5.1 EHLO not implemented").await?;
                }
                "HELO" => {
                    self.respond(io, When::Ehlo, "250 testkit.local").await?;
                }
                "STARTTLS" => {
                    let Some(tls) = self.config.starttls.clone().filter(|_| !self.tls) else {
                        self.send(io, "502 5.5.1 STARTTLS not available").await?;
                        continue;
                    };
                    let reply = self
                        .respond(io, When::StartTls, "220 2.0.0 Ready to start TLS")
                        .await?;
                    if !reply.starts_with("220") {
                        continue;
                    }
                    let plain = std::mem::replace(io, Box::new(tokio::io::duplex(1).0));
                    let stream = TlsAcceptor::from(tls)
                        .accept(plain)
                        .await
                        .map_err(|_| End::Closed)?;
                    *io = Box::new(stream);
                    self.tls = true;
                    self.buf.clear();
                }
                "AUTH" => self.auth(io, &line).await?,
                "MAIL" => self.mail(io, &line).await?,
                "RCPT" => self.rcpt(io, &line).await?,
                "DATA" => self.data(io).await?,
                "BDAT" => self.bdat(io, &upper).await?,
                "RSET" => {
                    self.reset();
                    self.respond(io, When::Rset, "250 2.0.0 Ok").await?;
                }
                "NOOP" => self.send(io, "250 2.0.0 Ok").await?,
                "QUIT" => {
                    self.send(io, "221 2.0.0 Bye").await?;
                    return Ok(());
                }
                _ => {
                    self.send(io, "500 5.5.2 Error: command not recognized")
                        .await?
                }
            }
        }
    }

    fn reset(&mut self) {
        self.mail = None;
        self.recipients.clear();
        self.bdat_content.clear();
    }

    async fn auth(&mut self, io: &mut Box<dyn Io>, line: &str) -> Result<(), End> {
        let Some((user, password)) = self.config.auth.clone() else {
            return self.send(io, "502 5.5.1 AUTH not available").await;
        };
        let words: Vec<&str> = line.split(' ').collect();
        let mechanism = words
            .get(1)
            .map(|m| m.to_ascii_uppercase())
            .unwrap_or_default();
        let decode = |b64: &str| {
            STANDARD
                .decode(b64.trim())
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let (given_user, given_secret) = match mechanism.as_str() {
            "PLAIN" => {
                let token = match words.get(2) {
                    Some(token) => token.to_string(),
                    None => {
                        self.send(io, "334 ").await?;
                        self.read_line(io).await?
                    }
                };
                let decoded = decode(&token).unwrap_or_default();
                let mut parts = decoded.split('\0').skip(1);
                (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                )
            }
            "LOGIN" => {
                self.send(io, "334 VXNlcm5hbWU6").await?;
                let given_user = decode(&self.read_line(io).await?).unwrap_or_default();
                self.send(io, "334 UGFzc3dvcmQ6").await?;
                (
                    given_user,
                    decode(&self.read_line(io).await?).unwrap_or_default(),
                )
            }
            "XOAUTH2" => {
                let decoded = decode(words.get(2).copied().unwrap_or_default()).unwrap_or_default();
                let mut fields = decoded.split('\x01');
                let given_user = fields
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("user=")
                    .to_string();
                let token = fields
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("auth=Bearer ")
                    .to_string();
                if given_user != user || token != password {
                    // Google's behaviour: a JSON error as a challenge, then 535 after the empty reply.
                    self.send(io, "334 eyJzdGF0dXMiOiI0MDEifQ==").await?;
                    self.read_line(io).await?;
                }
                (given_user, token)
            }
            _ => {
                return self
                    .send(io, "504 5.5.4 Unrecognized authentication type")
                    .await;
            }
        };
        if given_user == user && given_secret == password {
            let reply = self
                .respond(io, When::Auth, "235 2.7.0 Authentication successful")
                .await?;
            if reply.starts_with("235") {
                self.auth_user = Some(given_user);
            }
            Ok(())
        } else {
            self.respond(
                io,
                When::Auth,
                "535 5.7.8 Authentication credentials invalid",
            )
            .await
            .map(|_| ())
        }
    }

    async fn mail(&mut self, io: &mut Box<dyn Io>, line: &str) -> Result<(), End> {
        if self.config.auth.is_some() && self.auth_user.is_none() {
            return self.send(io, "530 5.7.0 Authentication required").await;
        }
        if self.mail.is_some() {
            return self.send(io, "503 5.5.1 Error: nested MAIL command").await;
        }
        let (address, params) = split_path(line);
        // Count the transaction before matching faults, so `on_transaction(n)` means the n-th MAIL.
        self.transaction = self.shared.transaction_count.fetch_add(1, Ordering::SeqCst);
        self.mail = Some((address.clone(), params.clone()));
        if let Some(limit) = self.config.size.filter(|&limit| limit > 0) {
            let declared = params.split(' ').find_map(|p| {
                p.to_ascii_uppercase()
                    .strip_prefix("SIZE=")
                    .and_then(|s| s.parse::<u64>().ok())
            });
            if declared.is_some_and(|size| size > limit) {
                self.mail = None;
                return self
                    .send(io, "552 5.3.4 Message size exceeds fixed limit")
                    .await;
            }
        }
        let reply = self.respond(io, When::MailFrom, "250 2.1.0 Ok").await?;
        if !reply.starts_with('2') {
            self.mail = None;
        }
        Ok(())
    }

    async fn rcpt(&mut self, io: &mut Box<dyn Io>, line: &str) -> Result<(), End> {
        if self.mail.is_none() {
            return self.send(io, "503 5.5.1 Error: need MAIL command").await;
        }
        let (address, _) = split_path(line);
        let specific = When::RcptTo(Some(address.clone()));
        let reply = match self.fault(&specific) {
            Some(_) => self.respond(io, specific, "250 2.1.5 Ok").await?,
            None => self.respond(io, When::RcptTo(None), "250 2.1.5 Ok").await?,
        };
        if reply.starts_with('2') {
            self.recipients.push(address);
        }
        Ok(())
    }

    async fn data(&mut self, io: &mut Box<dyn Io>) -> Result<(), End> {
        if self.mail.is_none() || self.recipients.is_empty() {
            return self.send(io, "554 5.5.1 Error: no valid recipients").await;
        }
        let reply = self
            .respond(io, When::Data, "354 End data with <CR><LF>.<CR><LF>")
            .await?;
        if !reply.starts_with("354") {
            return Ok(());
        }
        // The content ends at the first "\r\n.\r\n" (or "." alone on the first line).
        let end = loop {
            if self.buf.starts_with(b".\r\n") {
                break 0;
            }
            if let Some(i) = self.buf.windows(5).position(|w| w == b"\r\n.\r\n") {
                break i + 2;
            }
            self.fill(io).await?;
        };
        let wire: Vec<u8> = self.buf.drain(..end + 3).take(end).collect();
        let content = unstuff(&wire);
        self.finish(io, wire, content, false).await
    }

    async fn bdat(&mut self, io: &mut Box<dyn Io>, upper: &str) -> Result<(), End> {
        let mut words = upper.split(' ').skip(1);
        let Some(size) = words.next().and_then(|s| s.parse::<usize>().ok()) else {
            return self.send(io, "501 5.5.4 Syntax: BDAT size [LAST]").await;
        };
        let last = words.next() == Some("LAST");
        while self.buf.len() < size {
            self.fill(io).await?;
        }
        let chunk: Vec<u8> = self.buf.drain(..size).collect();
        if self.mail.is_none() || self.recipients.is_empty() {
            self.bdat_content.clear();
            return self.send(io, "554 5.5.1 Error: no valid recipients").await;
        }
        if let Some(action) = self.fault(&When::Data) {
            self.bdat_content.clear();
            if let Action::Delay(wait, _) = &action {
                tokio::time::sleep(*wait).await;
            }
            let action = match action {
                Action::Echo(prefix) => Action::Reply(format!("{prefix}{}", self.last_line)),
                action => action,
            };
            return match action {
                Action::Reply(reply) | Action::Delay(_, reply) => {
                    self.send(io, &reply).await?;
                    self.reset();
                    if reply.starts_with("421") {
                        Err(End::Closed)
                    } else {
                        Ok(())
                    }
                }
                Action::Drop => Err(End::Closed),
                // Echo was turned into a reply above.
                Action::Stall | Action::Echo(_) => Err(End::Stall),
            };
        }
        self.bdat_content.extend_from_slice(&chunk);
        if !last {
            return self
                .send(io, &format!("250 2.0.0 {size} octets received"))
                .await;
        }
        let content = std::mem::take(&mut self.bdat_content);
        self.finish(io, content.clone(), content, true).await
    }

    async fn finish(
        &mut self,
        io: &mut Box<dyn Io>,
        wire: Vec<u8>,
        content: Vec<u8>,
        bdat: bool,
    ) -> Result<(), End> {
        let (mail_from, mail_params) = self.mail.take().unwrap_or_default();
        let mut transaction = Transaction {
            connection: self.id,
            mail_from,
            mail_params,
            recipients: std::mem::take(&mut self.recipients),
            content,
            wire,
            bdat,
            tls: self.tls,
            auth_user: self.auth_user.clone(),
            final_reply: String::new(),
        };
        let too_big = self
            .config
            .size
            .is_some_and(|limit| limit > 0 && transaction.content.len() as u64 > limit);
        let default = if too_big {
            "552 5.3.4 Message size exceeds fixed limit".to_string()
        } else {
            format!("250 2.0.0 Ok: queued as T{}", self.transaction)
        };
        // Record before answering: the content arrived even if the reply is lost.
        let index = {
            let mut transactions = self.shared.transactions.lock().unwrap();
            transactions.push(transaction.clone());
            transactions.len() - 1
        };
        self.shared.changed.notify_waiters();
        // A fault at DataEnd applies to the transaction whose MAIL FROM we matched.
        self.mail = Some((String::new(), String::new()));
        let reply = self.respond(io, When::DataEnd, &default).await;
        self.mail = None;
        transaction.final_reply = match &reply {
            Ok(reply) => reply.clone(),
            Err(_) => String::new(),
        };
        self.shared.transactions.lock().unwrap()[index].final_reply = transaction.final_reply;
        self.shared.changed.notify_waiters();
        reply.map(|_| ())
    }
}

/// Splits `MAIL FROM:<a@b> SIZE=1` into (`a@b`, `SIZE=1`).
fn split_path(line: &str) -> (String, String) {
    let open = line.find('<').map_or(line.len(), |i| i + 1);
    let close = line[open..].find('>').map_or(line.len(), |i| open + i);
    let address = line[open..close].to_string();
    let params = line.get(close + 1..).unwrap_or_default().trim().to_string();
    (address, params)
}

/// Undoes dot-stuffing (RFC 5321 §4.5.2): a leading `.` on a line is removed.
fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut line_start = true;
    for &b in wire {
        if !(line_start && b == b'.') {
            out.push(b);
        }
        line_start = b == b'\n';
    }
    out
}
