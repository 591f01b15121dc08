//! Logging, metrics and health endpoints.
pub(crate) mod http;
mod listener;
pub(crate) mod logging;
pub(crate) mod metrics;
