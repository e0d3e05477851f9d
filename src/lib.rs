//! sluice: a PostgreSQL connection pooler. The library holds everything; `main.rs` is a thin CLI,
//! and the integration tests start poolers in-process through [`start`].

pub mod admin;
pub mod auth;
mod bind;
pub mod clients;
pub mod config;
pub mod error;
pub(crate) mod janitor;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod name_cap;
pub mod observe;
pub mod pool;
pub mod procfs;
pub mod protocol;
pub mod security;
pub mod server;
pub mod service;
pub mod session;
pub mod shared;
pub mod stream;
pub mod tls;

pub use config::Config;
pub use error::Error;
pub use listener::{RunningPooler, start};
