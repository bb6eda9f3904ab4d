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
    delivery::{CaptureTransport, Engine, EngineOptions, SmtpTransport},
    relay::Relay,
    service::Service,
    store::Store,
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
    config.check_exposure()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Store::open(&config.database_url, clock)
        .await
        .with_context(|| format!("opening the store at {}", redact_url(&config.database_url)))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let options = EngineOptions {
        concurrency: config.concurrency,
        retry: config.retry.clone(),
        lease: config.lease,
        ..Default::default()
    };
    let engine: JoinHandle<Result<(), crate::store::StoreError>> = match &config.relay_url {
        Some(url) => {
            let relay = Relay::parse(url, config.relay_password.clone())
                .map_err(|e| anyhow::anyhow!("HERALD_RELAY_URL: {e}"))?;
            let name = relay.display_address();
            let pool = Pool::new(
                Client::new(relay.config).context("HERALD_RELAY_URL")?,
                relay.pool,
            );
            tracing::info!(relay = %name, "delivering through the SMTP relay");
            let engine = Engine::new(store.clone(), SmtpTransport::new(pool, name), options);
            tokio::spawn(engine.run(stopped.clone()))
        }
        None => {
            tracing::info!("no HERALD_RELAY_URL: mail is delivered to the built-in capture inbox");
            let engine = Engine::new(store.clone(), CaptureTransport, options);
            tokio::spawn(engine.run(stopped.clone()))
        }
    };
    if config.api_token.is_none() {
        tracing::warn!(listen = %addr, "HERALD_API_TOKEN is not set: the API needs no authentication (loopback only)");
    }

    let mut service = Service::new(store.clone());
    service.default_from = config.default_from.clone();
    service.message_id_domain = config.message_id_domain.clone();
    let app = api::router(
        AppState::new(service, config.api_token.as_deref()),
        config.body_limit,
    );

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

/// Drops raw bodies of messages finished longer ago than `retention`, hourly (first run at start).
async fn prune_periodically(
    store: Store,
    retention: Option<Duration>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(retention) = retention else { return };
    loop {
        let cutoff = store.clock().now() - retention.as_millis() as i64;
        match store.prune_raw(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned raw bodies past the retention period"),
            Err(error) => tracing::warn!(%error, "pruning failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3_600)) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
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
