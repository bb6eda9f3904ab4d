//! Herald's service library: the store, the queue, delivery, the service, the application state and the
//! faces over it (the API and the dashboard), shared by the binary and its tests.

pub mod api;
pub mod app;
pub mod bounce;
pub mod clock;
pub mod config;
mod dashboard;
pub mod delivery;
pub mod dkim;
pub mod events;
pub mod link_tokens;
pub mod queue;
pub mod relay;
pub mod request;
pub mod serve;
pub mod service;
pub mod store;
pub mod submission;
pub mod templates;
pub mod text;
