//! What sluice knows about each connected client, shared with the pools (who holds a server),
//! and later the console and leak reports. Updated on state changes, never per message.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a client connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A unix-socket client.
    Unix,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix => f.write_str("unix socket"),
        }
    }
}

/// One logged-in client.
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique id (for logs, SHOW CLIENTS, KILL_CLIENT).
    pub id: u64,
    /// Where it connected from.
    pub peer: PeerAddr,
    /// Client-facing user name.
    pub user: String,
    /// Client-facing database name.
    pub database: String,
    /// When it connected.
    pub connected_at: Instant,
    application_name: Mutex<String>,
}

impl ClientInfo {
    /// Registers a new client.
    pub fn new(peer: PeerAddr, user: &str, database: &str, application_name: &str) -> ClientInfo {
        ClientInfo {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            user: user.to_string(),
            database: database.to_string(),
            connected_at: Instant::now(),
            application_name: Mutex::new(application_name.to_string()),
        }
    }

    /// The application_name the client currently has.
    pub fn application_name(&self) -> String {
        self.application_name.lock().clone()
    }

    /// Records a new application_name (the client ran SET application_name).
    pub fn set_application_name(&self, name: &str) {
        let mut current = self.application_name.lock();
        if *current != name {
            *current = name.to_string();
        }
    }

    /// `'app' at 10.0.0.5:41234 (client 17)`, for error details and logs.
    pub fn describe(&self) -> String {
        format!(
            "'{}' at {} (client {})",
            self.application_name(),
            self.peer,
            self.id
        )
    }
}
