//! `herald bench queue`: fills the store with many queued messages and measures claim latency and this
//! process's resident memory at several queue lengths (DESIGN.md invariant 6: memory is bounded by
//! configuration, not by the queue length).

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    measure::{print_whole_run, rss_mb, runtime},
    store::{open_store, small},
};

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// Queue lengths at which to measure, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Messages claimed per claim (the engine's batch).
    #[arg(long, default_value_t = 64)]
    pub claim: u32,
    /// Store URL; default: a fresh SQLite file in a temporary directory (kept with --keep).
    #[arg(long)]
    pub database: Option<String>,
    /// Keep the temporary database and print its path (e.g. to time `herald serve` starting on it).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    runtime()?.block_on(async {
        let (store, url) = open_store(args.database.as_deref(), &dir).await?;
        let mut filled = 0;
        let sizes_measured = sizes.len();
        for size in sizes {
            let fill_start = Instant::now();
            while filled < size {
                let n = (size - filled).min(5_000);
                store.accept((filled..filled + n).map(small).collect()).await?;
                filled += n;
            }
            let fill = fill_start.elapsed();
            // Claim latency: claim a batch and give it back, many times; median and p99.
            let mut times = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                let claimed = store.claim("bench", Duration::from_secs(60), args.claim).await?;
                times.push(t.elapsed());
                if claimed.len() != args.claim as usize {
                    bail!("claimed {} of {}", claimed.len(), args.claim);
                }
                store.release_leases("bench").await?;
            }
            times.sort();
            println!(
                "queue {size:>9}: claim of {} p50 {:.2} ms p99 {:.2} ms; resident memory {:.0} MB (filled in {:.1} s)",
                args.claim,
                times[times.len() / 2].as_secs_f64() * 1e3,
                times[times.len() * 99 / 100].as_secs_f64() * 1e3,
                rss_mb(),
                fill.as_secs_f64(),
            );
        }
        print_whole_run(
            filled,
            started,
            &format!(
                " ({filled} queued; {} claims of {} timed)",
                sizes_measured * 50,
                args.claim
            ),
        );
        if args.keep {
            let kept = dir.keep();
            println!("kept {url} (in {})", kept.display());
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
