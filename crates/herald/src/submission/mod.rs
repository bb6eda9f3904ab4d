//! SMTP submission (RFC 6409) beside the HTTP API: any program that sends mail through an SMTP relay —
//! Python's `smtplib`, Django, cron, Grafana — becomes a Herald client by changing one host name.
//!
//! A submitted message takes the same path as `POST /v1/messages` from the store on: it is committed through
//! the store's group commit before its `250`, claimed, delivered and archived like any other. What differs is
//! only how it arrives: as the client's own bytes ([`message`]), kept as they are except for what RFC 6409
//! lets a submission server change.
//!
//! - [`settings`] — `HERALD_SMTP_*`.
//! - [`session`] — the command state machine, AUTH, the transaction, the reply after the commit.
//! - [`wire`] — line and DATA framing with their limits (and what makes SMTP smuggling impossible).
//! - [`message`] — received bytes → a stored message.
//! - [`structure`] — the MIME structure of those bytes, walked without decoding the bodies.
//! - [`tls`] — STARTTLS and implicit TLS.

pub mod message;
pub mod session;
pub mod settings;
pub mod structure;
pub mod tls;
pub mod wire;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::extract::ConnectInfo;
pub use settings::Settings;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

use crate::{
    app::{AppState, FailureThrottle, token_hash},
    store::StoreError,
};

/// Wrong passwords a client may give within [`FAILURE_WINDOW`] before AUTH answers `454` until the oldest
/// is that old: the HTTP API's limits, counted apart.
const MAX_AUTH_FAILURES: usize = crate::app::MAX_TOKEN_FAILURES;
const FAILURE_WINDOW: Duration = crate::app::FAILURE_WINDOW;

/// What every session shares.
pub struct Shared {
    /// The HTTP API's state: the service (store, limits) and the token check the API uses.
    pub state: AppState,
    pub settings: Settings,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// `SIZE`: the largest message, `HERALD_BODY_LIMIT` like the API's request bodies.
    pub size_limit: usize,
    pub tls: Option<TlsAcceptor>,
    failures: FailureThrottle,
    /// With `HERALD_BOUNCE_DOMAIN` (issue 12): mail for that domain is taken without AUTH and read as
    /// bounces, complaints and unsubscribe requests.
    pub bounce: Option<Arc<crate::bounce::Intake>>,
}

impl Shared {
    /// Whether MAIL needs AUTH first: as for the API, as soon as `HERALD_API_TOKEN` is set or the store
    /// holds a token. A store that cannot say requires it.
    async fn auth_required(&self) -> bool {
        !self.state.token_hashes.is_empty() || self.state.any_stored_token().await.unwrap_or(true)
    }

    /// Whether `password` is an API token, by the same check as the API's bearer tokens. Without any token
    /// configured, any password is taken (there is nothing to check against, as with HTTP).
    async fn password_ok(&self, password: &str) -> Result<bool, StoreError> {
        let hash = token_hash(password);
        if self.state.token_hashes.contains(&hash) || self.state.is_stored_token(&hash).await? {
            return Ok(true);
        }
        Ok(!self.auth_required().await)
    }
}

/// The key a client's failures count under: its address, or its /64 for IPv6 (as for the API).
fn client_of(peer: SocketAddr) -> IpAddr {
    let mut extensions = axum::http::Extensions::new();
    extensions.insert(ConnectInfo(peer));
    crate::app::client_key(&extensions)
}

/// The bound listeners, made before the server reports itself started (so port 0 works in tests).
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub implicit_tls: Option<TcpListener>,
}

impl Listeners {
    /// Binds `HERALD_SMTP_LISTEN` and `HERALD_SMTPS_LISTEN`.
    pub fn bind(settings: &Settings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let bind = |address: Option<SocketAddr>, key: &'static str| {
            address
                .map(|address| {
                    listen(address).with_context(|| format!("{key}: listening on {address}"))
                })
                .transpose()
        };
        Ok(Self {
            plain: bind(settings.listen, "HERALD_SMTP_LISTEN")?,
            implicit_tls: bind(settings.smtps_listen, "HERALD_SMTPS_LISTEN")?,
        })
    }

    /// The address of the plain (STARTTLS) listener.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn implicit_tls_addr(&self) -> Option<SocketAddr> {
        self.implicit_tls.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// A listener with a backlog of [`BACKLOG`] (tokio's default is 1,024): a burst of connections waits in the
/// kernel's queue for its `220` or `421` instead of being dropped and retried by the clients seconds later.
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Connections the kernel queues before they are accepted (capped by `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// Starts the listeners' accept loops. The task ends when `stopped` turns true and the sessions have ended
/// (idle ones are told `421` at once; one receiving a message gets up to `grace` to finish it and hear
/// whether it was stored).
pub fn spawn(
    listeners: Listeners,
    state: AppState,
    settings: Settings,
    size_limit: usize,
    grace: Duration,
    bounce: Option<Arc<crate::bounce::Intake>>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let hostname = settings
        .hostname
        .clone()
        .unwrap_or_else(crate::delivery::host_name);
    let permits = Arc::new(Semaphore::new(settings.max_sessions));
    let shared = Arc::new(Shared {
        state,
        settings,
        hostname,
        size_limit,
        tls,
        failures: FailureThrottle::new(MAX_AUTH_FAILURES, FAILURE_WINDOW),
        bounce,
    });
    let mut loops = JoinSet::new();
    for (listener, implicit) in [(listeners.plain, false), (listeners.implicit_tls, true)] {
        if let Some(listener) = listener {
            tracing::info!(listen = ?listener.local_addr().ok(), implicit_tls = implicit, "SMTP submission is listening");
            loops.spawn(accept_loop(
                listener,
                implicit,
                shared.clone(),
                permits.clone(),
                grace,
                stopped.clone(),
            ));
        }
    }
    Ok(tokio::spawn(async move {
        while loops.join_next().await.is_some() {}
    }))
}

/// The reply to a connection over `HERALD_SMTP_MAX_SESSIONS` (RFC 5321 §3.1: 421 instead of the greeting).
const TOO_MANY_SESSIONS: &[u8] = b"421 4.3.2 too many open sessions; try again later\r\n";

async fn accept_loop(
    listener: TcpListener,
    implicit_tls: bool,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    grace: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or a connection reset before it was accepted: wait, then go on.
                tracing::warn!(%error, "accepting an SMTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("herald_smtp_sessions_refused_total").increment(1);
            // As for HTTP: one non-blocking write on the fresh socket, no task per refused connection.
            if let Ok(mut stream) = stream.into_std() {
                let _ = std::io::Write::write(&mut stream, TOO_MANY_SESSIONS);
            }
            continue;
        };
        metrics::counter!("herald_smtp_sessions_total").increment(1);
        let shared = shared.clone();
        let stop = stopped.clone();
        sessions.spawn(async move {
            let _permit = permit;
            connection(shared, stream, peer, implicit_tls, stop).await;
        });
    }
    drop(listener);
    let drained = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "closing SMTP sessions still open after the shutdown grace period"
        );
        sessions.shutdown().await;
    }
}

/// One connection: a session in clear text (then, after STARTTLS, one over TLS), or over TLS from the start.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let handshake = |stream: TcpStream| {
        let acceptor = shared.tls.clone().expect("TLS is configured");
        let timeout = shared.settings.command_timeout;
        async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "SMTP TLS handshake failed");
                    None
                }
                Err(_) => None,
            }
        }
    };
    if implicit_tls {
        let Some(tls) = handshake(stream).await else {
            return;
        };
        let mut wire = wire::Wire::new(tls);
        let mut session = session::Session::new(peer, true);
        session::run(&shared, &mut wire, &mut session, true, &mut stop).await;
        return;
    }
    let mut wire = wire::Wire::new(stream);
    let mut session = session::Session::new(peer, false);
    match session::run(&shared, &mut wire, &mut session, true, &mut stop).await {
        session::Exit::Close => {}
        session::Exit::StartTls => {
            let Some(tls) = handshake(wire.stream).await else {
                return;
            };
            let mut wire = wire::Wire::new(tls);
            // RFC 3207 §4.2: the client starts over with EHLO; nothing of the clear-text session is kept.
            let mut session = session::Session::new(peer, true);
            session::run(&shared, &mut wire, &mut session, false, &mut stop).await;
        }
    }
}
