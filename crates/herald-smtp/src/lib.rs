//! Herald's async SMTP client: pipelined transactions with one outcome per recipient, STARTTLS and
//! implicit TLS with certificate verification, AUTH, and per-relay pools with a hard connection cap.
//!
//! Why our own client: no crate combines pipelining that reads every reply, per-recipient results,
//! a hard per-relay connection cap and session reuse after a refused recipient (STYLE.md).
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_smtp::Error> {
//! use herald_smtp::{BodySegment, Client, Envelope, Pool, PoolConfig, RelayConfig, Security};
//!
//! let mut relay = RelayConfig::new("smtp.example.com", 587);
//! relay.security = Security::StartTlsRequired;
//! relay.credentials = Some(herald_smtp::Credentials::password("user", "secret"));
//! let pool = Pool::new(Client::new(relay)?, PoolConfig::default());
//! let envelope = Envelope::new("noreply@example.com", ["a@example.net", "b@example.org"]);
//! let body = [BodySegment::new(&b"Subject: hi\r\n\r\nhello\r\n"[..])];
//! let delivery = pool.send(&envelope, &body).await?;
//! for outcome in &delivery.recipients {
//!     println!("{}: {} {}", outcome.address, outcome.status, outcome.reply);
//! }
//! # Ok(()) }
//! ```
//!
//! For a stream of messages to one relay, [`Pool::send_batch`] (or [`Connection::send_batch`])
//! pipelines each message's content with the next message's commands: one round trip per message.
//!
//! Results: `Ok(Delivery)` holds one [`RecipientOutcome`] per recipient (accepted / transient /
//! permanent, with the reply that decided it); `Err(Error)` applies to the whole message and
//! answers [`Error::is_transient`], [`Error::is_permanent`], [`Error::reply`],
//! [`Error::outcome_unknown`] and [`Error::relay_fault`] (the relay, not the message, is unusable).
//!
//! Modules are named after the protocol stage they implement, as in Stalwart's mail-send.

mod auth;
mod config;
mod connection;
mod dot_stuff;
mod ehlo;
mod envelope;
mod error;
mod pool;
mod reply;
mod tls;
mod transaction;

pub use auth::{Credentials, Mechanism};
pub use config::{RelayConfig, Security, Timeouts};
pub use connection::{Client, Connection};
pub use dot_stuff::{BodySegment, dot_stuff};
pub use ehlo::Extensions;
pub use envelope::{Dsn, DsnNotify, DsnReturn, Envelope};
pub use error::{Error, RelayFault, Stage};
pub use pool::{Pool, PoolConfig, PoolStats};
pub use reply::{EnhancedStatus, Reply, Status};
pub use transaction::{Delivery, RecipientOutcome};
