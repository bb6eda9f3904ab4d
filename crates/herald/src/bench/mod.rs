//! The workloads behind `herald bench …`: one module per bench, each with the options it takes and the run
//! that prints its figures (README.md here says what each measures and how to run it).
//!
//! They live in the binary, beside the product but not in its library, so that the service's modules hold
//! only the service; `cli/bench.rs` parses the command line and calls the run. Every bench prints the total
//! count it processed and the whole run's wall time beside any rate.

pub mod compose;
pub mod e2e;
mod fixtures;
mod measure;
pub mod queries;
pub mod queue;
pub mod smtp;
pub mod store;
pub mod submission;
pub mod suppressions;
pub mod webhooks;
