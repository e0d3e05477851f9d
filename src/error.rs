//! The crate's top-level error: what can stop a pooler from starting.

/// Errors from starting or running the pooler as a whole (per-client problems never get here:
/// they end one session with an ErrorResponse).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address or socket path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The per-core worker threads (`runtime = "per-core"`) could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}
