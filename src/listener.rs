//! Accept loops (in progress).

use crate::{Config, Error};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A pooler started in this process: its addresses, and the handle to stop it.
pub struct RunningPooler {
    tcp_addr: SocketAddr,
    unix_socket: Option<PathBuf>,
}

impl RunningPooler {
    /// The TCP address actually bound (useful with `listen_port = 0`).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }
    /// Path of the unix socket file, when one is configured.
    pub fn unix_socket_path(&self) -> Option<&std::path::Path> {
        self.unix_socket.as_deref()
    }
    /// Stops accepting and closes all connections.
    pub async fn shutdown(self) {}
}

/// Binds the listeners and starts serving clients in the current tokio runtime.
pub async fn start(config: Config) -> Result<RunningPooler, Error> {
    let _ = config;
    Err(Error::NotReady)
}
