//! Herald's message model and MIME writer: correct, compact RFC 5322 bytes,
//! no I/O.
//!
//! Build a [`Message`] with [`Message::builder`] (addresses are [`Mailbox`]es
//! parsed at the edge, attachments are [`Part`]s), then
//! [`Message::compose`] it into a [`Composed`]: a list of [`Segment`]s plus
//! the [`Envelope`] (sender, de-duplicated recipients, whether 8BITMIME or
//! SMTPUTF8 is needed).
//!
//! ```
//! use herald_mime::{ComposeOptions, Mailbox, Message};
//!
//! let msg = Message::builder()
//!     .from(Mailbox::parse("Shop <noreply@shop.example>")?)
//!     .to(Mailbox::parse("\"Doe, Jane\" <jane@example.com>")?)
//!     .subject("Your order has shipped 📦")
//!     .text("Hello Jane")
//!     .build()?;
//! let composed = msg.compose(&ComposeOptions::default());
//! let bytes = composed.to_vec();
//! assert!(bytes.starts_with(b"From: Shop <noreply@shop.example>\r\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The tree
//! Always the minimal correct one: text → `text/plain`; HTML → `text/html`;
//! both → `multipart/alternative` (text first); inline parts →
//! `multipart/related` around the HTML (or the alternative); attachments →
//! `multipart/mixed` at the top.
//!
//! # Encodings
//! Each body gets the smallest safe transfer encoding: `7bit` when it is
//! ASCII with lines of at most 998 octets, `8bit` for such UTF-8 text when
//! [`ComposeOptions::allow_8bit`] says the transport has 8BITMIME, else
//! quoted-printable or base64, whichever is shorter (CJK text is shorter in
//! base64, mostly-ASCII HTML in QP). Output is CRLF throughout, no line
//! exceeds 998 octets, and QP escapes a `.` or `From ` at the start of a
//! line.
//!
//! # Batches
//! [`Part::encode`] encodes an attachment or inline image once into an
//! [`EncodedPart`]; [`MessageBuilder::shared_part`] puts it into any number
//! of messages, each of which then holds a clone of the same `Bytes` as one
//! of its segments. Boundaries are per message and live in the message's own
//! segments, never inside a shared one.
//!
//! # Why our own writer rather than mail-builder
//! STYLE.md planned mail-builder wrapped by this crate. We measured it
//! (`cargo bench -p herald-mime`, group `standard_notification`): it writes
//! one contiguous buffer, so a part shared by a batch would be re-encoded or
//! copied into every message, and its `Text` header encodes every ASCII
//! subject longer than 77 characters instead of folding it. A segment-based
//! writer was needed for sharing anyway; writing the encoders into the same
//! buffer (base64 through a 12-bit table straight into 76-column lines, QP
//! through a class table) made the full build faster too. mail-builder stays
//! as a dev-dependency: the benchmark compares against it and the tests use
//! it nowhere else.

mod address;
mod encode;
mod error;
mod header;
mod message;
mod part;

pub use address::{Address, AddressError, Mailbox};
pub use encode::TransferEncoding;
pub use error::ComposeError;
pub use message::{ComposeOptions, Composed, Envelope, Message, MessageBuilder, Segment};
pub use part::{EncodedPart, Part};
