//! `herald serve`: the HTTP API, the delivery engine and housekeeping in one process.
//!
//! Shutdown order matters for "nothing accepted is lost": first the HTTP server stops taking requests and
//! finishes the ones in flight (each answered only after its commit), then the engine stops claiming,
//! finishes its SMTP transactions within the grace period, records them and gives back its leases.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use herald_smtp::{Client, Pool};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    api::{self, AppState},
    clock::{Clock, SystemClock},
    config::{Config, redact_url},
    delivery::{
        CaptureTransport, Engine, EngineOptions, RelayBoard, Route, Routes, SmtpTransport,
        Transport as _,
    },
    relay::Relay,
    service::Service,
    store::{ACTIVITY_RETENTION, Store},
};

/// A running server.
pub struct Server {
    /// Where the HTTP API listens (useful with port 0).
    pub addr: SocketAddr,
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
    let stored_tokens = !store.tokens().await?.is_empty();
    config.check_exposure(stored_tokens)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let relays = RelayBoard::default();
    let options = EngineOptions {
        concurrency: config.concurrency,
        retry: config.retry.clone(),
        lease: config.lease,
        board: relays.clone(),
        ..Default::default()
    };
    let routes = relay_routes(&config)?;
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

    let mut service = Service::new(store.clone());
    service.default_from = config.default_from.clone();
    service.message_id_domain = config.message_id_domain.clone();
    service.limits.request_bytes = config.request_budget;
    let mut state = AppState::new(service, config.api_token.as_deref());
    state.relays = relays;
    state.capture_inbox = capture_inbox;
    state.stopping = Some(stopped.clone());
    let app = api::router(state, config.body_limit);

    let housekeeping = tokio::spawn(prune_periodically(
        store.clone(),
        config.retention,
        stopped.clone(),
    ));
    let mut http_stopped = stopped.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|stop| *stop).await;
            })
            .await
            .context("HTTP server")?;
        // The API has answered its last request; now the engine may stop.
        let result = engine.await.context("delivery engine panicked")?;
        housekeeping.abort();
        result.context("delivery engine")?;
        tracing::info!("herald stopped");
        Ok(())
    });
    tracing::info!(listen = %addr, "herald is serving");
    Ok(Server {
        addr,
        store,
        stop,
        task,
    })
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

/// Hourly housekeeping (first run at start): drops per-minute activity older than the chart shows, and raw
/// bodies of messages finished longer ago than `retention` when one is configured. Every minute between,
/// the store's own upkeep ([`Store::maintain`]).
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
                Err(error) => tracing::warn!(%error, "pruning failed; will retry"),
            }
        }
        // Activity is counted in wall-clock time (not the store's clock), so it is pruned by it too.
        let cutoff = SystemClock.now() - ACTIVITY_RETENTION.as_millis() as i64;
        if let Err(error) = store.prune_activity(cutoff).await {
            tracing::warn!(%error, "pruning old activity failed; will retry");
        }
        // Hourly pruning; the store's own upkeep every minute.
        for _ in 0..60 {
            if let Err(error) = store.maintain().await {
                tracing::warn!(%error, "store upkeep failed; will retry");
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
