//! `herald serve`: run the service until SIGTERM or SIGINT.

use std::{path::PathBuf, process::ExitCode};

use herald::{config::Config, serve};

/// Run the service: HTTP API, dashboard and delivery workers, configured by HERALD_* variables.
#[derive(Debug, clap::Args)]
#[command(after_help = config_help())]
pub struct ServeArgs {
    /// A TOML file with the same keys as the environment variables (lower case, without HERALD_,
    /// e.g. `listen = "127.0.0.1:8025"`); the environment wins.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn config_help() -> String {
    let mut text = String::from("Environment:\n");
    for (key, what) in herald::config::KEYS {
        text.push_str(&format!("  {key:<28} {what}\n"));
    }
    text
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::load(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = serve::start(config).await?;
        let stopper = server.stopper();
        tokio::spawn(async move {
            serve::stop_signal().await;
            tracing::info!("stop signal: finishing in-flight work");
            let _ = stopper.send(true);
        });
        server.wait().await
    })?;
    Ok(ExitCode::SUCCESS)
}
