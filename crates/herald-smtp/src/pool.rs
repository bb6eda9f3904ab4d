//! A pool of sessions to one relay: a hard cap on open connections (a semaphore, as in
//! mini-redis), reuse without a NOOP round trip, a message limit and an age limit per session, an
//! idle timeout, and a fresh session after any failure.
//!
//! The cap counts every open session, idle or busy: a task takes a permit, then an idle session or,
//! when there is none, opens one. A session is only opened while its opener holds a permit and the
//! idle list is empty, so open sessions never exceed the permits.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{
    connection::{Client, Connection},
    dot_stuff::BodySegment,
    envelope::Envelope,
    error::{Error, Stage},
    transaction::{Delivery, Parts, parts_of},
};

/// Limits of a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Hard cap on sessions open at the same time (idle ones included).
    pub max_connections: usize,
    /// Transactions per session before it is closed with QUIT (relays often limit this).
    pub max_messages_per_connection: u32,
    /// An idle session older than this is closed instead of reused (servers drop idle clients
    /// after a few minutes; RFC 5321 §4.5.3.2.7 gives them at least 5).
    pub idle_timeout: Duration,
    /// A session older than this is not reused.
    pub max_lifetime: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: 4,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(15 * 60),
        }
    }
}

/// Counters for observing a pool (tests, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Sessions opened since the pool was created.
    pub opened: usize,
    /// Transactions that reused an existing session.
    pub reused: usize,
    /// Sessions open now.
    pub open: usize,
    /// The most sessions ever open at once.
    pub peak_open: usize,
}

#[derive(Debug, Default)]
struct Counters {
    opened: AtomicUsize,
    reused: AtomicUsize,
    open: AtomicUsize,
    peak_open: AtomicUsize,
}

/// Sessions to one relay, shared by any number of tasks (clone it; clones share the pool).
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    client: Client,
    config: PoolConfig,
    permits: Semaphore,
    /// The cap now: it starts at `config.max_connections` and moves with
    /// [`Pool::set_max_connections`].
    cap: Mutex<Cap>,
    idle: Mutex<Vec<Connection>>,
    counters: Counters,
}

/// The semaphore's permits are the cap; lowering the cap while sessions are busy cannot take their
/// permits away, so the shortfall is owed and paid back as busy sessions finish.
#[derive(Debug)]
struct Cap {
    max: usize,
    /// Permits to take out of circulation when they are released.
    owed: usize,
}

/// A held permit; dropping it pays back what a lowered cap is owed before it returns to the pool.
struct Held<'a> {
    pool: &'a PoolInner,
    permit: Option<SemaphorePermit<'a>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut cap = self.pool.cap.lock().expect("pool cap lock");
        if cap.owed > 0 {
            cap.owed -= 1;
            permit.forget();
        }
    }
}

impl Pool {
    pub fn new(client: Client, config: PoolConfig) -> Self {
        let permits = Semaphore::new(config.max_connections.max(1));
        Pool {
            inner: Arc::new(PoolInner {
                client,
                config,
                permits,
                cap: Mutex::new(Cap {
                    max: config.max_connections.max(1),
                    owed: 0,
                }),
                idle: Mutex::new(Vec::new()),
                counters: Counters::default(),
            }),
        }
    }

    /// The pool's limits.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The cap on open sessions now (`config().max_connections` unless changed since).
    pub fn max_connections(&self) -> usize {
        self.inner.cap.lock().expect("pool cap lock").max
    }

    /// Changes the cap on open sessions (at least 1) while the pool is in use: a herald node's
    /// share of a cluster-wide `pool=` changes as nodes join and leave. Nothing in flight is
    /// interrupted: a lower cap takes effect as busy sessions finish (they are closed instead of
    /// kept idle while more are open than allowed), and idle sessions beyond it are closed now.
    pub fn set_max_connections(&self, max: usize) {
        let max = max.max(1);
        {
            let mut cap = self.inner.cap.lock().expect("pool cap lock");
            if max < cap.max {
                let lower_by = cap.max - max;
                let taken = self.inner.permits.forget_permits(lower_by);
                cap.owed += lower_by - taken;
            } else if max > cap.max {
                let raise_by = max - cap.max;
                let forgiven = cap.owed.min(raise_by);
                cap.owed -= forgiven;
                self.inner.permits.add_permits(raise_by - forgiven);
            }
            cap.max = max;
        }
        let excess = self.take_excess_idle();
        if excess.is_empty() {
            return;
        }
        // QUIT needs a runtime; outside one (never in Herald) the sockets are simply closed.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let pool = self.clone();
                runtime.spawn(async move {
                    for connection in excess {
                        pool.quit(connection).await;
                    }
                });
            }
            Err(_) => excess.into_iter().for_each(|c| self.discard(c)),
        }
    }

    /// Idle sessions beyond the cap, oldest first, taken out of the idle list.
    fn take_excess_idle(&self) -> Vec<Connection> {
        let max = self.max_connections();
        let mut idle = self.inner.idle.lock().expect("pool lock");
        let open = self.inner.counters.open.load(Ordering::Relaxed);
        let excess = open.saturating_sub(max).min(idle.len());
        idle.drain(..excess).collect()
    }

    async fn quit(&self, connection: Connection) {
        connection.quit().await;
        self.inner.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The relay client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn stats(&self) -> PoolStats {
        let counters = &self.inner.counters;
        PoolStats {
            opened: counters.opened.load(Ordering::Relaxed),
            reused: counters.reused.load(Ordering::Relaxed),
            open: counters.open.load(Ordering::Relaxed),
            peak_open: counters.peak_open.load(Ordering::Relaxed),
        }
    }

    /// Sends one message on a pooled session (see [`Connection::send`] for the result).
    ///
    /// A reused session that turns out to be dead before the server acknowledged anything of this
    /// transaction is replaced once by a fresh session; nothing was accepted, so nothing can be
    /// delivered twice.
    pub async fn send(&self, envelope: &Envelope, body: &[BodySegment]) -> Result<Delivery, Error> {
        self.run(vec![(envelope, parts_of(body))])
            .await
            .pop()
            .expect("one result per message")
    }

    /// [`Pool::send`] for content in one buffer.
    pub async fn send_raw(&self, envelope: &Envelope, body: &[u8]) -> Result<Delivery, Error> {
        self.run(vec![(envelope, vec![(body, false)])])
            .await
            .pop()
            .expect("one result per message")
    }

    /// Sends several messages over one pooled session with cross-message pipelining (see
    /// [`Connection::send_batch`]); one result per message, in order. Messages that were not started
    /// because the session failed continue on a fresh session.
    pub async fn send_batch(
        &self,
        messages: &[(&Envelope, &[BodySegment])],
    ) -> Vec<Result<Delivery, Error>> {
        self.run(
            messages
                .iter()
                .map(|(envelope, body)| (*envelope, parts_of(body)))
                .collect(),
        )
        .await
    }

    async fn run<'a>(&self, items: Vec<(&'a Envelope, Parts<'a>)>) -> Vec<Result<Delivery, Error>> {
        let mut results: Vec<Option<Result<Delivery, Error>>> =
            items.iter().map(|_| None).collect();
        if items.is_empty() {
            return Vec::new();
        }
        // The semaphore is never closed, so acquire cannot fail.
        let _permit = Held {
            pool: &self.inner,
            permit: Some(
                self.inner
                    .permits
                    .acquire()
                    .await
                    .expect("pool semaphore is never closed"),
            ),
        };
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut retried_dead_session = false;
        while !pending.is_empty() {
            let (mut connection, reused) = match self.take_idle() {
                Some(connection) => (connection, true),
                None => match self.open().await {
                    Ok(connection) => (connection, false),
                    Err(error) => {
                        for &index in &pending[1..] {
                            results[index] = Some(Err(error.duplicate()));
                        }
                        results[pending[0]] = Some(Err(error));
                        break;
                    }
                },
            };
            let outcome = connection
                .run_batch(pending.iter().map(|&index| items[index].clone()).collect())
                .await;
            // A session that was already dead when a message started on it (an idle pooled session,
            // or the session of the previous message in this batch): the message failed before the
            // server acknowledged anything of it, so it can go again (once) on a fresh session.
            let failed_at = outcome
                .iter()
                .position(|result| matches!(result, Some(result) if is_dead_session(result)));
            let retry_at = failed_at.filter(|&position| {
                (reused || position > 0)
                    && !retried_dead_session
                    && !connection.is_usable()
                    && connection.acknowledged_in_transaction == 0
            });
            if retry_at.is_some() {
                tracing::debug!(
                    host = connection.host(),
                    "session was dead before the server acknowledged anything; retrying on a fresh one"
                );
                retried_dead_session = true;
            }
            let mut still_pending = Vec::new();
            for (position, (&index, result)) in pending.iter().zip(outcome).enumerate() {
                match result {
                    Some(_) if retry_at == Some(position) => still_pending.push(index),
                    Some(result) => results[index] = Some(result),
                    None => still_pending.push(index),
                }
            }
            self.put_back(connection).await;
            if still_pending.len() == pending.len() && retry_at.is_none() {
                // No progress at all (cannot happen with a usable session); never loop forever.
                for index in still_pending.drain(..) {
                    results[index] = Some(Err(Error::ConnectionLost {
                        stage: Stage::MailFrom,
                        outcome_unknown: false,
                    }));
                }
            }
            pending = still_pending;
        }
        results
            .into_iter()
            .map(|result| result.expect("every message has a result"))
            .collect()
    }

    /// Closes every idle session with QUIT (graceful shutdown).
    pub async fn close(&self) {
        let idle: Vec<Connection> =
            std::mem::take(&mut *self.inner.idle.lock().expect("pool lock"));
        for connection in idle {
            connection.quit().await;
            self.inner.counters.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes (with QUIT) the idle sessions past the idle timeout or the lifetime, so they do not
    /// linger until the next send; the delivery engine calls this now and then.
    pub async fn close_expired(&self) {
        let config = &self.inner.config;
        let expired: Vec<Connection> = {
            let mut idle = self.inner.idle.lock().expect("pool lock");
            let (expired, keep) =
                std::mem::take(&mut *idle)
                    .into_iter()
                    .partition(|connection: &Connection| {
                        connection.last_used.elapsed() >= config.idle_timeout
                            || connection.age() >= config.max_lifetime
                    });
            *idle = keep;
            expired
        };
        for connection in expired {
            connection.quit().await;
            self.inner.counters.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The most recently used idle session that is still fit for reuse; stale ones are dropped.
    fn take_idle(&self) -> Option<Connection> {
        let config = &self.inner.config;
        loop {
            let mut connection = self.inner.idle.lock().expect("pool lock").pop()?;
            let fresh = connection.last_used.elapsed() < config.idle_timeout
                && connection.age() < config.max_lifetime;
            if fresh && connection.still_open() {
                self.inner.counters.reused.fetch_add(1, Ordering::Relaxed);
                return Some(connection);
            }
            self.discard(connection);
        }
    }

    async fn open(&self) -> Result<Connection, Error> {
        let connection = self.inner.client.connect().await?;
        let counters = &self.inner.counters;
        counters.opened.fetch_add(1, Ordering::Relaxed);
        let open = counters.open.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak_open.fetch_max(open, Ordering::Relaxed);
        Ok(connection)
    }

    fn discard(&self, connection: Connection) {
        drop(connection);
        self.inner.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Returns a session to the idle list, or closes it (QUIT while the permit is still held, so the
    /// cap also covers sessions being closed).
    async fn put_back(&self, connection: Connection) {
        let config = &self.inner.config;
        // A lowered cap: this session is one too many while more are open than allowed.
        let over_cap = self.inner.counters.open.load(Ordering::Relaxed) > self.max_connections();
        if !connection.is_usable() {
            self.discard(connection);
        } else if over_cap
            || connection.transactions() >= config.max_messages_per_connection
            || connection.age() >= config.max_lifetime
        {
            connection.quit().await;
            self.inner.counters.open.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.inner.idle.lock().expect("pool lock").push(connection);
        }
    }
}

/// The failures that mean "the session was already gone" rather than "the server said no".
fn is_dead_session(result: &Result<Delivery, Error>) -> bool {
    match result {
        Err(Error::ConnectionLost { .. } | Error::Io { .. }) => true,
        Err(Error::Rejected { reply, .. }) => reply.code == 421,
        _ => false,
    }
}
