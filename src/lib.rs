//! sluice: a PostgreSQL connection pooler. The library holds everything; `main.rs` is a thin CLI,
//! and the integration tests start poolers in-process through [`start`].
//!
//! Only what the binary and the tests use is public: the modules below marked `pub`, and within
//! them the items those callers name; everything else is `pub(crate)` (the `unreachable_pub`
//! lint keeps it so).
#![warn(unreachable_pub)]

pub mod admin;
pub mod auth;
mod bind;
pub(crate) mod clients;
pub mod config;
pub mod convert;
pub(crate) mod error;
pub mod handover;
pub(crate) mod janitor;
pub(crate) mod listener;
pub mod logging;
pub(crate) mod metrics;
pub mod name_cap;
pub(crate) mod notify;
pub(crate) mod observe;
pub mod pool;
pub(crate) mod procfs;
pub mod protocol;
pub(crate) mod security;
pub(crate) mod server;
pub mod service;
pub(crate) mod session;
pub mod shared;
pub(crate) mod stream;
pub(crate) mod tcp_options;
pub mod tls;
pub(crate) mod upgrade;
pub(crate) mod workers;

pub use config::Config;
pub use error::Error;
pub use listener::{RunningPooler, start};

/// Every series name the Prometheus endpoint publishes (histograms by base name), from the one
/// catalogue that describes them: `tests/docs.rs` checks that docs/metrics.md documents each.
pub fn metric_series() -> Vec<String> {
    observe::catalogue::series_names()
}
