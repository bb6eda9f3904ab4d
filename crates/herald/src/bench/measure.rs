//! What the benches measure besides wall time: CPU time of the process and of one thread, resident memory;
//! and the runtime they run on.

use std::time::{Duration, Instant};

/// The last line of every bench: the messages it processed in all and the whole run's wall time, setup
/// and warm-up included, so that no rate above it stands without its count and its time.
pub(super) fn print_whole_run(messages: usize, started: Instant, detail: &str) {
    println!(
        "whole run: {messages} messages, {:.2} s{detail}",
        started.elapsed().as_secs_f64()
    );
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// CPU time of this process's thread named `name` (the store writer), from /proc: on a busy machine this
/// tells the writer's own cost per message, and so its ceiling, whatever the other processes take.
pub(super) fn thread_cpu(name: &str) -> Option<Duration> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            return Some(Duration::from_secs_f64(ticks / ticks_per_second));
        }
    }
    None
}

/// Resident memory of this process (VmRSS), in MB.
pub(super) fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU time of this process, all threads (getrusage, RUSAGE_SELF); zero if it fails.
// getrusage has no safe wrapper in std; this is the benches' one system call through libc.
#[allow(unsafe_code)]
pub(super) fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `struct rusage` into the zeroed buffer it is given and reads nothing
    // from it; the buffer is read only when it reports success.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}
