//! The queue: due messages claimed in batches under a lease, retried on a schedule.

pub mod retry;

pub use retry::RetryPolicy;
