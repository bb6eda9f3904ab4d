//! Herald's service library: the store, the queue and (later) the API, shared by the binary and its tests.

pub mod clock;
pub mod delivery;
pub mod queue;
pub mod store;
