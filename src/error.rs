//! The crate's error type.

/// Errors (in progress).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder.
    #[error("not ready")]
    NotReady,
}
