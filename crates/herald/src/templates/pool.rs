//! The threads templates are compiled and rendered on.
//!
//! A template is client input that runs: compiling a long operator chain recurses as deep as the chain is
//! long, css-inline serializes nested HTML recursively, and html2text can take seconds on a large document.
//! None of that may happen on a tokio worker: its 2 MiB stack overflows (and a stack overflow aborts the
//! whole process, it is not a panic), and a worker busy for seconds stalls every connection it serves,
//! `/healthz` included. So every compile and render runs here, on a fixed number of threads with a large,
//! known stack, fed through a bounded queue:
//!
//! - the stack is large enough for the deepest source the complexity check lets through, with a measured
//!   margin (see the `deepest_allowed_*` tests);
//! - the caller waits at most the render's wall-time budget, then answers on its own; a job whose caller
//!   stopped waiting before it started is skipped, so a backlog drains at once;
//! - the number of threads never grows: a render that overstays its budget keeps its thread until it ends
//!   (it is bounded by fuel and the HTML limits), and while every thread is taken, new work waits in the
//!   queue and, when the queue is full, is refused as busy instead of piling up;
//! - a panic in a job is caught and becomes an error; the thread lives on.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

/// How the render threads are set up.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Threads that compile and render; at least 1.
    pub threads: usize,
    /// Stack of each thread, in bytes. Reserved address space: only the pages a deep render touches use
    /// memory.
    pub stack_bytes: usize,
    /// Jobs that may wait for a thread; beyond that a job is refused as busy.
    pub queue: usize,
    /// Nice value of the render threads (Linux): above the async workers' 0, so that a long render yields
    /// the CPU to the threads answering HTTP (`/healthz` stays fast while renders use every core).
    pub nice: i32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            threads: cores.clamp(2, 8),
            stack_bytes: 64 * 1024 * 1024,
            queue: 1024,
            nice: 10,
        }
    }
}

/// Why a job gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every thread is taken and the queue is full, or the job waited its whole budget without starting.
    #[error("the template renderer is busy; try again shortly")]
    Busy,
    /// The job started and did not finish within its budget.
    #[error("the render took longer than {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The job panicked (a bug in the engine or in Herald); the panic message.
    #[error("the renderer failed: {0}")]
    Panicked(String),
    /// The pool is shut down.
    #[error("the template renderer is stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the render threads; clones share them. The threads end when the last handle is dropped.
#[derive(Clone)]
pub struct Renderer {
    queue: mpsc::SyncSender<Job>,
    threads: usize,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new(&PoolConfig::default())
    }
}

impl Renderer {
    /// Starts the threads.
    ///
    /// # Panics
    /// When the operating system refuses to start a thread (out of memory or thread limit at start-up).
    pub fn new(config: &PoolConfig) -> Self {
        let (queue, jobs) = mpsc::sync_channel::<Job>(config.queue);
        let jobs = Arc::new(Mutex::new(jobs));
        let threads = config.threads.max(1);
        for i in 0..threads {
            let jobs = jobs.clone();
            let nice = config.nice;
            std::thread::Builder::new()
                .name(format!("herald-render-{i}"))
                .stack_size(config.stack_bytes)
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        // The lock is held only while waiting for the next job, never while running one.
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })
                .expect("the render threads start");
        }
        Self { queue, threads }
    }

    /// The number of render threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on a render thread and waits at most `budget` for it.
    pub async fn run<T, F>(&self, budget: Duration, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (started, result) = self.submit(job)?;
        match tokio::time::timeout(budget, result).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(PoolError::Stopped),
            Err(_) if started.load(Ordering::Acquire) => Err(PoolError::TimedOut(budget)),
            Err(_) => Err(PoolError::Busy),
        }
    }

    /// Runs `job` on a render thread and blocks the calling thread until it ends (for callers outside the
    /// async runtime: the fuzz target, tests).
    pub fn run_blocking<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (_, result) = self.submit(job)?;
        result.blocking_recv().unwrap_or(Err(PoolError::Stopped))
    }

    #[allow(clippy::type_complexity)]
    fn submit<T, F>(
        &self,
        job: F,
    ) -> Result<
        (
            Arc<AtomicBool>,
            tokio::sync::oneshot::Receiver<Result<T, PoolError>>,
        ),
        PoolError,
    >
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let wrapped: Job = Box::new(move || {
            // The caller stopped waiting (its budget ran out in the queue): the answer is already given.
            if tx.is_closed() {
                return;
            }
            flag.store(true, Ordering::Release);
            let outcome = catch_unwind(AssertUnwindSafe(job)).map_err(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                tracing::error!(%message, "a template job panicked");
                PoolError::Panicked(message)
            });
            let _ = tx.send(outcome);
        });
        match self.queue.try_send(wrapped) {
            Ok(()) => Ok((started, rx)),
            Err(mpsc::TrySendError::Full(_)) => Err(PoolError::Busy),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(PoolError::Stopped),
        }
    }
}

/// Sets the calling thread's nice value (on Linux the nice value is per thread). Failing is harmless: the
/// thread keeps the process's priority.
// setpriority has no safe wrapper in std: the one system call of the render pool.
#[allow(unsafe_code)]
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is shared with them.
        let failed = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0
        };
        if failed {
            tracing::debug!(nice, "could not lower the render thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn small(threads: usize, queue: usize) -> Renderer {
        Renderer::new(&PoolConfig {
            threads,
            stack_bytes: 8 * 1024 * 1024,
            queue,
            nice: 10,
        })
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    #[allow(unsafe_code)] // getpriority, to read back what lower_priority set
    async fn render_threads_yield_the_cpu_to_the_async_workers() {
        let pool = small(1, 4);
        // SAFETY: a plain system call about the calling thread.
        let nice = pool
            .run(Duration::from_secs(5), || unsafe {
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
            })
            .await
            .unwrap();
        assert_eq!(nice, 10);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_thread_lives_on() {
        let pool = small(1, 4);
        let e = pool
            .run(Duration::from_secs(5), || -> u32 { panic!("boom {}", 7) })
            .await
            .unwrap_err();
        assert_eq!(e, PoolError::Panicked("boom 7".into()));
        assert_eq!(pool.run(Duration::from_secs(5), || 41 + 1).await, Ok(42));
    }

    #[tokio::test]
    async fn a_slow_job_times_out_and_queued_jobs_past_their_budget_are_skipped() {
        let pool = small(1, 8);
        let started = Instant::now();
        let slow = pool.run(Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_millis(600))
        });
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued = pool.run(Duration::from_millis(100), move || {
            flag.store(true, Ordering::SeqCst)
        });
        let (slow, queued) = tokio::join!(slow, queued);
        assert_eq!(slow, Err(PoolError::TimedOut(Duration::from_millis(100))));
        assert_eq!(
            queued,
            Err(PoolError::Busy),
            "never started: busy, not timed out"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        // Once the slow job ends, the thread skips the abandoned one and serves the next.
        assert_eq!(pool.run(Duration::from_secs(5), || 1).await, Ok(1));
        assert!(!ran.load(Ordering::SeqCst), "an abandoned job does not run");
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let pool = small(1, 1);
        let gate = Arc::new(std::sync::Barrier::new(2));
        let held = gate.clone();
        let (_, blocker) = pool
            .submit(move || {
                held.wait();
            })
            .unwrap();
        // Wait until the thread holds the blocker, so the queue's one seat is free.
        let deadline = Instant::now() + Duration::from_secs(5);
        let waiting = loop {
            let queued = pool.submit(|| ());
            match queued {
                Ok(waiting) => break waiting,
                Err(PoolError::Busy) if Instant::now() < deadline => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            pool.run(Duration::from_secs(5), || ()).await,
            Err(PoolError::Busy)
        );
        gate.wait();
        blocker.await.unwrap().unwrap();
        waiting.1.await.unwrap().unwrap();
    }
}
