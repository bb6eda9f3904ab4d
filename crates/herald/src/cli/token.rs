//! `herald token`: API tokens kept in the store, as their SHA-256 only.
//!
//! `create` prints the token once; the store never holds it, so a lost token is revoked and replaced, not
//! recovered. `herald serve` accepts these tokens next to `HERALD_API_TOKEN`, and requires a token as soon as
//! one exists (see `api::require_token`).

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use herald::{
    clock::SystemClock,
    config::{Config, redact_url},
    service::format_rfc3339,
    store::Store,
};
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};

/// Manage API tokens (stored as SHA-256 hashes in HERALD_DATABASE_URL's store).
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// A TOML file with the same keys as the environment variables (as for `herald serve`); only
    /// `database_url` is used.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token and print it on standard output. It is shown this once: only its hash is stored.
    Create {
        /// What the token is for (`ci`, `billing-service`): 1 to 64 letters, digits, '_', '.' or '-'.
        name: String,
    },
    /// List the tokens' names and creation times (never the tokens).
    List,
    /// Revoke a token: requests with it are refused within seconds on every node.
    Revoke { name: String },
}

/// Tokens start with this, so a leaked one is recognisable to secret scanners and to people.
const PREFIX: &str = "herald_";

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::open(&config.database_url, Arc::new(SystemClock))
            .await
            .with_context(|| {
                format!("opening the store at {}", redact_url(&config.database_url))
            })?;
        match args.command {
            TokenCommand::Create { name } => create(&store, &name).await,
            TokenCommand::List => list(&store).await,
            TokenCommand::Revoke { name } => revoke(&store, &name).await,
        }
    })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        bail!("{name:?} is not a token name: use 1 to 64 letters, digits, '_', '.' or '-'");
    }
    Ok(())
}

/// 32 bytes from the operating system's CSPRNG, base64url: 256 bits, as hard to guess as the hash is long.
fn new_token() -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .context("reading the system's random source")?;
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    ))
}

async fn create(store: &Store, name: &str) -> anyhow::Result<ExitCode> {
    check_name(name)?;
    let token = new_token()?;
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if !store.create_token(name, &hash).await? {
        bail!("a token named {name:?} exists already (revoke it first, or choose another name)");
    }
    // The token alone on stdout, so `TOKEN=$(herald token create ci)` works; the advice goes to stderr.
    println!("{token}");
    eprintln!(
        "created token {name:?}: send it as `Authorization: Bearer <token>`. It is not shown again."
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(store: &Store) -> anyhow::Result<ExitCode> {
    let tokens = store.tokens().await?;
    if tokens.is_empty() {
        eprintln!("no tokens (create one with `herald token create NAME`)");
        return Ok(ExitCode::SUCCESS);
    }
    let width = tokens
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  CREATED", "NAME");
    for token in tokens {
        println!(
            "{:<width$}  {}",
            token.name,
            format_rfc3339(token.created_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(store: &Store, name: &str) -> anyhow::Result<ExitCode> {
    if store.revoke_token(name).await? {
        eprintln!("revoked token {name:?}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("no token named {name:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_recognisable() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        check_name("ci-2026.q4_x").unwrap();
        assert!(check_name("").is_err());
        assert!(check_name("has space").is_err());
    }
}
