//! `herald serve`: one node — the delivery engine, housekeeping, and the listeners in front of the service —
//! in one process. Here the application state is built and each face is given it: the HTTP listener serves
//! the API router and the dashboard router side by side (neither knows the other), and the SMTP submission
//! listener will start beside it in [`start_listeners`].
//!
//! Shutdown order matters for "nothing accepted is lost": first the listeners stop taking requests and
//! finish the ones in flight (each answered only after its commit), then the engine stops claiming,
//! finishes its SMTP transactions within the grace period, records them and gives back its leases.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit},
    http::StatusCode,
    middleware,
};
use herald_smtp::{Client, Pool};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::{JoinHandle, JoinSet},
};
use tower::ServiceExt as _;
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::{
    api,
    app::{self, ApiError, AppState},
    clock::{Clock, SystemClock},
    config::{Config, HttpLimits, redact_url},
    dashboard,
    delivery::{
        CaptureTransport, Engine, EngineOptions, RelayBoard, Route, Routes, SmtpTransport,
        Transport as _, host_name, run_heartbeat,
    },
    relay::Relay,
    service::Service,
    store::{ACTIVITY_RETENTION, NodeInfo, Store},
};

/// A running server.
pub struct Server {
    /// Where the HTTP API listens (useful with port 0).
    pub addr: SocketAddr,
    /// Where SMTP submission listens (`HERALD_SMTP_LISTEN`, `HERALD_SMTPS_LISTEN`), when it does.
    pub smtp_addr: Option<SocketAddr>,
    pub smtps_addr: Option<SocketAddr>,
    pub store: Store,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Asks the server to stop (as SIGTERM does) and waits until it has.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server stops by itself (after `stop_signal` fired).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens the store, starts the engine and the HTTP API, and returns once the API is listening.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Store::open(&config.database_url, clock)
        .await
        .with_context(|| format!("opening the store at {}", redact_url(&config.database_url)))?;
    // Before anything else: on SQLite this takes the file's lock, and a second server stops here.
    let node = NodeInfo {
        id: format!("node-{}", uuid::Uuid::now_v7()),
        host: host_name(),
        pid: std::process::id(),
    };
    let membership = store.join(&node).await.with_context(|| {
        format!(
            "joining the nodes serving {}",
            redact_url(&config.database_url)
        )
    })?;
    if membership.recovered > 0 {
        tracing::warn!(
            recovered = membership.recovered,
            "took back the messages the previous process was delivering when it stopped; they are due now"
        );
    }
    let stored_tokens = !store.tokens().await?.is_empty();
    config.check_exposure(stored_tokens)?;
    // SMTP submission (issue 11): the same rule for its ports.
    config
        .smtp
        .check_exposure(config.api_token.is_some() || stored_tokens)?;
    let smtp_listeners = crate::submission::Listeners::bind(&config.smtp)?;
    // Issue 13: a DKIM key that cannot be unsealed stops the start, rather than mail going out unsigned.
    let signing = crate::dkim::Signing::new(config.dkim_secret()?);
    let keys = signing
        .load(&store)
        .await
        .context("reading the DKIM keys")?;
    if !keys.is_empty() {
        tracing::info!(keys = ?keys, "signing with DKIM");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let relays = RelayBoard::default();
    // The engine starts with this node's share of the relays' limits, not the whole of them: count the live
    // nodes once before it starts (the heartbeat keeps the count from then on).
    let live_at_start = match store.heartbeat(&node, config.lease).await {
        Ok(report) => report.live_nodes,
        Err(error) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "first heartbeat failed; starting as if alone until the next"
            );
            1
        }
    };
    let (live_nodes_tx, live_nodes) = watch::channel(live_at_start);
    let mut service = Service::new(store.clone());
    service.default_from = config.default_from.clone();
    service.message_id_domain = config.message_id_domain.clone();
    service.dkim = signing;
    service.limits.request_bytes = config.request_budget;
    // Issue 12: unsubscribe links point here; their tokens (and VERP's) are keyed by HERALD_SECRET_KEY when
    // it is set, else by the key kept in the store.
    service.public_url = config.public_url.as_ref().map(|url| url.to_string());
    service.bounce_domain = config.bounce.as_ref().map(|bounce| bounce.domain.clone());
    if let Some(secret) = config.secret_key.as_deref() {
        service
            .use_secret_for_links(secret)
            .context("HERALD_SECRET_KEY")?;
    }
    // Issue 12: VERP return paths and the bounce intake share the link-token key.
    let bounce = match &config.bounce {
        Some(settings) => {
            let tokens = service
                .link_tokens()
                .await
                .context("loading the link-token key for VERP")?;
            let intake = crate::bounce::Intake::new(settings, tokens);
            tracing::info!(domain = %settings.domain, "VERP return paths and bounce intake are on");
            if config.smtp.listen.is_none() && config.smtp.smtps_listen.is_none() {
                tracing::warn!(
                    "HERALD_BOUNCE_DOMAIN is set but no HERALD_SMTP_LISTEN: bounces cannot come back to this node"
                );
            }
            Some(intake)
        }
        None => None,
    };
    let options = EngineOptions {
        owner: node.id.clone(),
        live_nodes,
        concurrency: config.concurrency,
        retry: config.retry.clone(),
        lease: config.lease,
        board: relays.clone(),
        verp: bounce.as_ref().map(|intake| Arc::new(intake.verp.clone())),
        ..Default::default()
    };
    let routes = relay_routes(&config)?;
    let heartbeat = tokio::spawn(run_heartbeat(
        store.clone(),
        node.clone(),
        config.lease,
        live_nodes_tx,
    ));
    let capture_inbox = routes.is_none();
    let engine: JoinHandle<Result<(), crate::store::StoreError>> = match routes {
        Some(routes) => {
            for route in routes.relays() {
                tracing::info!(
                    relay = %route.name,
                    sender_domains = ?route.sender_domains,
                    connections = route.transport.sessions(),
                    rate = ?route.limits.rate,
                    domain_concurrency = ?route.limits.domain_concurrency,
                    "delivering through the SMTP relay"
                );
            }
            let engine = Engine::with_routes(store.clone(), routes, options);
            tokio::spawn(engine.run(stopped.clone()))
        }
        None => {
            tracing::info!("no HERALD_RELAY_URL: mail is delivered to the built-in capture inbox");
            let engine = Engine::new(store.clone(), CaptureTransport, options);
            tokio::spawn(engine.run(stopped.clone()))
        }
    };
    if config.api_token.is_none() && !stored_tokens {
        tracing::warn!(listen = %addr, "no HERALD_API_TOKEN and no stored tokens: the API needs no authentication (loopback only)");
    }

    // Issue 12: webhook endpoints, and this node's dispatcher of their outbox.
    service.webhooks = crate::events::manage::Management {
        allow_private: config.webhooks.allow_private,
        sealer: config
            .secret_key
            .as_deref()
            .map(crate::dkim::SecretKey::for_webhooks)
            .transpose()?,
    };
    let dispatcher = crate::events::dispatch::Dispatcher::new(
        store.clone(),
        config.webhooks.clone(),
        service.webhooks.clone(),
        node.id.clone(),
        service.webhooks_changed.clone(),
    )
    .context("building the webhook HTTP client")?;
    let webhooks = tokio::spawn(dispatcher.run(stopped.clone()));
    let mut state = AppState::new(service, config.api_token.as_deref());
    state.relays = relays;
    state.capture_inbox = capture_inbox;
    state.stopping = Some(stopped.clone());
    state.hosts = Arc::new(app::AllowedHosts::new(addr, config.public_url.as_ref()));
    state.metrics_token_hash = config.metrics_token.as_deref().map(app::token_hash);
    let (smtp_addr, smtps_addr) = (
        smtp_listeners.plain_addr(),
        smtp_listeners.implicit_tls_addr(),
    );

    let housekeeping = tokio::spawn(prune_periodically(
        store.clone(),
        config.retention,
        stopped.clone(),
    ));
    let listeners = start_listeners(
        state,
        listener,
        smtp_listeners,
        &config,
        bounce,
        stopped.clone(),
    )?;
    let store_for_leave = store.clone();
    let task = tokio::spawn(async move {
        for (name, listener) in listeners {
            listener.await.with_context(|| format!("{name} panicked"))?;
        }
        // Every listener has answered its last request; now the engine may stop.
        let result = engine.await.context("delivery engine panicked");
        // The webhook requests in flight finish (bounded by HERALD_WEBHOOK_TIMEOUT) and are recorded.
        if webhooks.await.is_err() {
            tracing::error!("the webhook dispatcher panicked");
        }
        // The engine gave back its leases: the node may now leave (on SQLite, the lock goes with it).
        heartbeat.abort();
        let _ = heartbeat.await;
        if let Err(error) = store_for_leave.leave(&node).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "could not remove this node's heartbeat row; the others will"
            );
        }
        drop(membership);
        let result = result?;
        housekeeping.abort();
        result.context("delivery engine")?;
        tracing::info!("herald stopped");
        Ok(())
    });
    tracing::info!(listen = %addr, "herald is serving");
    Ok(Server {
        addr,
        smtp_addr,
        smtps_addr,
        store,
        stop,
        task,
    })
}

/// A listener's task, by the name its panic is reported under; it ends once `stopped` turns true and what it
/// was serving is done.
type Listener = (&'static str, JoinHandle<()>);

/// Starts this node's listeners, each given the same application state: the HTTP listener on `http` (bound
/// by the caller, so that the allowed hosts know its address) and, when configured, SMTP submission on
/// `smtp` (issue 11: the same service, the same token check, the same group commit).
fn start_listeners(
    state: AppState,
    http: TcpListener,
    smtp: crate::submission::Listeners,
    config: &Config,
    bounce: Option<Arc<crate::bounce::Intake>>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Listener>> {
    let submission = crate::submission::spawn(
        smtp,
        state.clone(),
        config.smtp.clone(),
        config.body_limit,
        config.http.shutdown_grace,
        bounce,
        stopped.clone(),
    )?;
    let routes = http_router(state, config.body_limit);
    Ok(vec![
        (
            "HTTP server",
            tokio::spawn(serve_http(http, routes, config.http.clone(), stopped)),
        ),
        ("SMTP submission", submission),
    ])
}

/// The whole HTTP surface of `herald serve`: the API and the dashboard side by side, under the layers every
/// request passes (request metrics, the open-mode guard, the body limit), and one JSON 404 for any other path.
pub fn http_router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .merge(api::router(state.clone()))
        .merge(dashboard::router(state.clone()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            app::open_mode_guard,
        ))
        .layer(middleware::from_fn(app::count_requests))
        .with_state(state)
}

/// The answer to a connection over `HERALD_HTTP_MAX_CONNECTIONS`: short, so that it fits the socket buffer
/// and is written without waiting on the client.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
    retry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 39\r\n\r\n\
    too many open connections; retry later\n";

/// The HTTP server loop (instead of `axum::serve`, which has no such knobs): every connection gets hyper's
/// header timeout (which also ends idle keep-alive connections), a deadline for its request bodies, and one of
/// `max_connections` permits, as mini-redis caps its connections with a semaphore. A connection over the cap is
/// answered 503 and closed at once rather than left waiting in the backlog, so a flood of idle sockets
/// cannot hold the descriptors that the store, the relays and `/healthz` need.
///
/// On stop the listener closes, each connection finishes the request it is serving and closes; those still
/// open after `shutdown_grace` (a client sending its request byte by byte) are dropped, so a slow client
/// cannot hold shutdown. Nothing accepted is lost that way: a request is answered only after its commit,
/// and one cut before its answer was either not committed or is found again by its idempotency key.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let app = tower::ServiceBuilder::new()
        .layer(RequestBodyDeadlineLayer::new(limits.body_timeout))
        .service(app);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (EMFILE) or a connection reset before it was accepted: wait a little
                // rather than spin, and go on.
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse_connection(stream);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => Some(result),
                _ = stopped.wait_for(|stop| *stop) => None,
            };
            let result = match result {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                // A client that went away or was too slow: its business, not an operator's.
                tracing::debug!(%error, %peer, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "waiting for open HTTP connections to finish");
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            grace = ?limits.shutdown_grace,
            "closing HTTP connections still open after the shutdown grace period"
        );
        connections.shutdown().await;
    }
}

/// Answers a connection over the cap with a 503 and closes it, without waiting for the client.
fn refuse_connection(stream: TcpStream) {
    metrics::counter!("herald_http_connections_refused_total").increment(1);
    // Tokio's `try_write` refuses until its reactor has seen the new socket writable, so the 503 was sometimes
    // never sent. A fresh socket's send buffer is empty: one non-blocking write of these few bytes on the
    // plain socket goes through at once, without a task per refused connection.
    if let Ok(mut stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut stream, TOO_MANY_CONNECTIONS);
    }
}

/// The configured relays (`HERALD_RELAY_URL` as the default, `HERALD_RELAY_URL_<NAME>` by sender domain), or
/// `None` when there is none and mail goes to the capture inbox.
fn relay_routes(config: &Config) -> anyhow::Result<Option<Routes<SmtpTransport>>> {
    let transport = |key: &str, url: &str, password: Option<String>, name: Option<&str>| {
        let relay = Relay::parse(url, password).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        let address = relay.display_address();
        let shown = match name {
            Some(name) => format!("{name} ({address})"),
            None => address,
        };
        let pool = Pool::new(
            Client::new(relay.config).context(key.to_owned())?,
            relay.pool,
        );
        anyhow::Ok(Route::new(
            shown.clone(),
            SmtpTransport::new(pool, shown),
            relay.limits,
        ))
    };
    let mut routes = Vec::new();
    let mut default = None;
    if let Some(url) = &config.relay_url {
        routes.push(transport(
            "HERALD_RELAY_URL",
            url,
            config.relay_password.clone(),
            None,
        )?);
        default = Some(0);
    }
    for named in &config.relays {
        let key = format!("HERALD_RELAY_URL_{}", named.name.to_ascii_uppercase());
        let password = named
            .password
            .clone()
            .or_else(|| config.relay_password.clone());
        routes.push(
            transport(&key, &named.url, password, Some(&named.name))?
                .for_domains(named.domains.iter().cloned()),
        );
        if config.relay_default.as_deref() == Some(named.name.as_str()) {
            default = Some(routes.len() - 1);
        }
    }
    match default {
        None if routes.is_empty() => Ok(None),
        None => anyhow::bail!("HERALD_RELAY_URL: named relays need a default relay"),
        Some(default) => Ok(Some(
            Routes::new(routes, default).map_err(|e| anyhow::anyhow!("relays: {e}"))?,
        )),
    }
}

/// Hourly housekeeping (first run at start): drops per-minute activity older than the chart shows, expired
/// suppressions, and raw bodies of messages finished longer ago than `retention` when one is configured.
/// Every minute between, the store's own upkeep ([`Store::maintain`]).
async fn prune_periodically(
    store: Store,
    retention: Option<Duration>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let now = store.clock().now();
        if let Some(retention) = retention {
            match store.prune_raw(now - retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(pruned, "pruned raw bodies past the retention period")
                }
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "pruning failed; will retry"
                ),
            }
            // Issue 12: kept inbound mail (bounces Herald could not apply) ages out like the bodies.
            match store
                .prune_inbound(now - retention.as_millis() as i64)
                .await
            {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(pruned, "pruned kept inbound mail past the retention period")
                }
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "pruning kept inbound mail failed; will retry"
                ),
            }
        }
        // Issue 12: an expired suppression no longer applies, but would stay on the list (and in every export)
        // for ever. Deleted a chunk per commit, by the store's clock, the one the accept-time check reads.
        match store.prune_expired_suppressions(now).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics::counter!("herald_suppressions_expired_total").increment(deleted);
                tracing::info!(deleted, "deleted expired suppressions");
            }
            Err(error) => tracing::warn!(
                error = &error as &dyn std::error::Error,
                "deleting expired suppressions failed; will retry"
            ),
        }
        // Activity is counted in wall-clock time (not the store's clock), so it is pruned by it too.
        let cutoff = SystemClock.now() - ACTIVITY_RETENTION.as_millis() as i64;
        if let Err(error) = store.prune_activity(cutoff).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "pruning old activity failed; will retry"
            );
        }
        // Hourly pruning; the store's own upkeep every minute.
        for _ in 0..60 {
            match store.maintain().await {
                Ok(done) if done != Default::default() => {
                    tracing::info!(analyzed = ?done.analyzed, "store upkeep refreshed statistics")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "store upkeep failed; will retry"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_of_a_connection_is_a_whole_response() {
        let text = std::str::from_utf8(super::TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
    }
}
