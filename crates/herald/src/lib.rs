//! Herald's service library: the store, the queue and (later) the API, shared by the binary and its tests.

pub mod api;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod queue;
pub mod relay;
pub mod request;
pub mod serve;
pub mod service;
pub mod store;
pub mod templates;
