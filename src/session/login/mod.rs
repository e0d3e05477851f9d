//! Logging a client in: the startup packet and the welcome (`startup`), and how the client
//! authenticates (`client_auth`). What a login ends with, either way, is defined here.

mod client_auth;
mod startup;

pub(crate) use startup::{LoggedIn, Login, log_in, pool_for};

use crate::protocol::PgError;

/// How the startup phase ended without a logged-in client.
pub(crate) enum Refusal {
    /// Tell the client this, then close.
    Fatal(PgError),
    /// Close quietly (cancel request handled, or the client went away).
    Quiet,
}

impl From<std::io::Error> for Refusal {
    fn from(_: std::io::Error) -> Self {
        Refusal::Quiet
    }
}
