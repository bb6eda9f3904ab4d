//! `herald dkim`: DKIM keys per sender domain and selector, kept in the store (issue 13).
//!
//! `generate` and `rotate` print the DNS TXT record to publish on standard output (the record text alone with
//! `--record-only`, for scripts), and the advice on standard error. A running `herald serve` signs with a new or
//! rotated key within `dkim::KEY_RING_TTL`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context as _, bail};
use herald::{
    clock::SystemClock,
    config::{Config, redact_url},
    dkim::{
        Algorithm, StoredKey,
        manage::{self, ManageError},
        record::zone_line,
    },
    service::format_rfc3339,
    store::Store,
};

/// Manage DKIM signing keys (stored in HERALD_DATABASE_URL's store; private keys sealed with
/// HERALD_SECRET_KEY when it is set).
#[derive(Debug, clap::Args)]
pub struct DkimArgs {
    /// A TOML file with the same keys as the environment variables (as for `herald serve`); only
    /// `database_url` and `secret_key` are used.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: DkimCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DkimCommand {
    /// Create the first key of DOMAIN and print the DNS TXT record to publish.
    Generate {
        /// The signing domain (d=): the From domain, or a parent of it.
        domain: String,
        #[command(flatten)]
        key: KeyOptions,
    },
    /// List the keys, their state and their DNS records.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a new key for DOMAIN under a new selector and sign with it from now on. The old keys are retired:
    /// keep their DNS records published for a few days (mail signed with them is still in flight or being
    /// checked), then `remove` them.
    Rotate {
        domain: String,
        #[command(flatten)]
        key: KeyOptions,
    },
    /// Delete a key. Mail is no longer signed with it; unpublish its DNS record after the mail it signed is
    /// delivered.
    Remove {
        domain: String,
        #[arg(long)]
        selector: String,
    },
}

#[derive(Debug, clap::Args)]
struct KeyOptions {
    /// The selector (s=): the record is published at SELECTOR._domainkey.DOMAIN.
    #[arg(long)]
    selector: String,
    /// ed25519 (RFC 8463, small and fast) or rsa (2048 bits, verified by every receiver).
    #[arg(long, default_value = "rsa", value_parser = ["ed25519", "rsa"])]
    algorithm: String,
    /// Print only the record's text (what goes in the TXT value).
    #[arg(long)]
    record_only: bool,
}

pub fn run(args: DkimArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let secret = config.dkim_secret()?;
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
            DkimCommand::Generate { domain, key } => {
                create(&store, secret.as_ref(), &domain, &key, false).await
            }
            DkimCommand::Rotate { domain, key } => {
                create(&store, secret.as_ref(), &domain, &key, true).await
            }
            DkimCommand::List { json } => list(&store, json).await,
            DkimCommand::Remove { domain, selector } => {
                if manage::remove_key(&store, &domain, &selector).await? {
                    eprintln!(
                        "removed the key {selector} of {domain}: unpublish {selector}._domainkey.{domain} once the mail \
                         it signed has been delivered"
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    bail!("{domain} has no key with selector {selector}")
                }
            }
        }
    })
}

async fn create(
    store: &Store,
    secret: Option<&herald::dkim::SecretKey>,
    domain: &str,
    options: &KeyOptions,
    rotate: bool,
) -> anyhow::Result<ExitCode> {
    let algorithm: Algorithm = options.algorithm.parse()?;
    let key =
        match manage::generate_key(store, secret, domain, &options.selector, algorithm, rotate)
            .await
        {
            Ok(key) => key,
            Err(e @ (ManageError::Exists { .. } | ManageError::HasActive { .. })) => bail!("{e}"),
            Err(e) => return Err(e.into()),
        };
    print_record(&key, options.record_only);
    if !key.encrypted {
        eprintln!(
            "note: HERALD_SECRET_KEY is not set, so the private key is stored unencrypted (as safe as the database)"
        );
    }
    eprintln!(
        "publish the record above, then check it: dig +short TXT {}",
        key.dns_name()
    );
    if rotate {
        eprintln!(
            "{} signs with {} from now on (running servers within seconds); keep the old records published for a \
             few days, then `herald dkim remove`",
            key.domain, key.selector
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(key: &StoredKey, record_only: bool) {
    if record_only {
        println!("{}", key.dns_record());
    } else {
        println!("name:   {}", key.dns_name());
        println!("type:   TXT");
        println!("value:  {}", key.dns_record());
        println!(
            "zone:   {}",
            zone_line(&key.selector, &key.domain, &key.dns_record())
        );
    }
}

async fn list(store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let keys = store.dkim_keys().await?;
    if json {
        for key in &keys {
            println!("{}", manage::key_json(key, manage::is_active(key, &keys)));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if keys.is_empty() {
        eprintln!("no DKIM keys (create one with `herald dkim generate DOMAIN --selector S`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("DOMAIN\tSELECTOR\tALGORITHM\tSTATE\tENCRYPTED\tCREATED\tDNS RECORD");
    for key in &keys {
        let state = if manage::is_active(key, &keys) {
            "active".to_owned()
        } else if let Some(at) = key.retired_at {
            format!("retired {}", format_rfc3339(at))
        } else {
            "standby".to_owned()
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{} TXT \"{}\"",
            key.domain,
            key.selector,
            key.algorithm,
            state,
            if key.encrypted { "yes" } else { "no" },
            format_rfc3339(key.created_at),
            key.dns_name(),
            key.dns_record()
        );
    }
    Ok(ExitCode::SUCCESS)
}
