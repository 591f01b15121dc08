//! Logging, metrics and health endpoints.
pub(crate) mod http;
pub(crate) mod logging;
pub(crate) mod metrics;
