//! What sluice knows about each connected client, shared with the pools (who holds a server),
//! and later the console and leak reports. Updated on state changes, never per message.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Why sluice ends a client from outside its session (the session tells the client and leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// An operator or the pooler itself (KILL_CLIENT, a removed database, shutdown), with the
    /// message the client is told.
    Operator(String),
    /// client_idle_timeout: the client sent nothing for this long.
    IdleTimeout(Duration),
}

impl Kill {
    /// The FATAL the client gets.
    pub fn error(&self) -> crate::protocol::PgError {
        use crate::protocol::{PgError, sqlstate};
        match self {
            Kill::Operator(reason) => PgError::fatal(sqlstate::ADMIN_SHUTDOWN, reason.clone()),
            Kill::IdleTimeout(limit) => PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "client_idle_timeout")
                .with_detail(format!("the client sent nothing for {:.1}s", limit.as_secs_f64())),
        }
    }
}

/// What a client is doing, as the console and leak reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// Logged in, holding no server.
    Idle,
    /// Queued for a server.
    Waiting,
    /// Holding a server with a request in flight.
    Active,
    /// Holding a server inside a transaction, nothing running.
    IdleInTransaction,
    /// Holding a server outside a transaction (session mode).
    Holding,
}

/// The changing part of a client's state.
#[derive(Debug, Clone)]
pub struct ClientLive {
    /// What it is doing.
    pub phase: ClientPhase,
    /// Since when.
    pub phase_since: Instant,
    /// When its last request began.
    pub request_at: Instant,
    /// The server it holds: (server id, backend pid).
    pub server: Option<(u64, i32)>,
    /// Since when it holds that server.
    pub server_since: Option<Instant>,
    /// When its open transaction began (None outside a transaction).
    pub xact_since: Option<Instant>,
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
    /// Wall-clock connect time (for the console's timestamps).
    pub connected_wall: std::time::SystemTime,
    /// Process id of a unix-socket peer (SO_PEERCRED).
    pub peer_pid: Option<i32>,
    /// sluice's own end of the connection (TCP).
    pub local: Option<SocketAddr>,
    application_name: Mutex<String>,
    live: Mutex<ClientLive>,
    last_query: Mutex<String>,
    process: std::sync::OnceLock<Option<(i32, String)>>,
    kill_reason: Mutex<Option<Kill>>,
    kill: tokio::sync::Notify,
    prepared: std::sync::atomic::AtomicU32,
}

impl ClientInfo {
    /// Registers a new client.
    pub fn new(
        peer: PeerAddr,
        peer_pid: Option<i32>,
        local: Option<SocketAddr>,
        user: &str,
        database: &str,
        application_name: &str,
    ) -> ClientInfo {
        let now = Instant::now();
        ClientInfo {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            user: user.to_string(),
            database: database.to_string(),
            connected_at: now,
            connected_wall: std::time::SystemTime::now(),
            peer_pid,
            local,
            application_name: Mutex::new(application_name.to_string()),
            live: Mutex::new(ClientLive {
                phase: ClientPhase::Idle,
                phase_since: now,
                request_at: now,
                server: None,
                server_since: None,
                xact_since: None,
            }),
            last_query: Mutex::new(String::new()),
            process: std::sync::OnceLock::new(),
            kill_reason: Mutex::new(None),
            kill: tokio::sync::Notify::new(),
            prepared: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// How many named prepared statements the client holds (SHOW CLIENTS).
    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    pub(crate) fn set_prepared(&self, count: usize) {
        self.prepared
            .store(u32::try_from(count).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Asks the client's session to end with a FATAL carrying `reason` (KILL, KILL_CLIENT).
    pub fn kill(&self, reason: &str) {
        self.kill_with(Kill::Operator(reason.to_string()));
    }

    /// Ends the client for `why` (the first reason given wins).
    pub fn kill_with(&self, why: Kill) {
        self.kill_reason.lock().get_or_insert(why);
        self.kill.notify_one();
    }

    /// Resolves with the reason once the client is killed. A client in the middle of a request
    /// (`busy`) is not ended for being idle: such a kill, given as it woke up, is withdrawn.
    pub async fn killed(&self, busy: bool) -> Kill {
        loop {
            {
                let mut reason = self.kill_reason.lock();
                match &*reason {
                    Some(Kill::IdleTimeout(_)) if busy => *reason = None,
                    Some(k) => return k.clone(),
                    None => {}
                }
            }
            self.kill.notified().await;
        }
    }

    /// Ends an idle client that has been idle longer than `limit` (client_idle_timeout).
    pub fn kill_if_idle_for(&self, limit: Duration, now: Instant) {
        let live = self.live.lock();
        if live.phase == ClientPhase::Idle && now.duration_since(live.phase_since) > limit {
            drop(live);
            self.kill_with(Kill::IdleTimeout(limit));
        }
    }

    /// A copy of the changing state.
    pub fn live(&self) -> ClientLive {
        self.live.lock().clone()
    }

    /// Records a phase change (and the server held, if any). Called on transitions only.
    pub fn set_phase(&self, phase: ClientPhase, server: Option<(u64, i32)>) {
        let mut live = self.live.lock();
        let now = Instant::now();
        if matches!(phase, ClientPhase::Waiting | ClientPhase::Active) && live.phase != ClientPhase::Active {
            live.request_at = now;
        }
        if live.phase != phase {
            live.phase = phase;
            live.phase_since = now;
        }
        if live.server.map(|s| s.0) != server.map(|s| s.0) {
            live.server_since = server.map(|_| now);
        }
        live.server = server;
        match phase {
            ClientPhase::IdleInTransaction => {
                live.xact_since.get_or_insert(now);
            }
            ClientPhase::Active => {}
            _ => live.xact_since = None,
        }
    }

    /// Records the start of the transaction the server just reported (status `T`/`E`).
    pub fn transaction_began(&self, at: Instant) {
        let mut live = self.live.lock();
        if live.xact_since.is_none() {
            live.xact_since = Some(at);
        }
    }

    /// Keeps the first 200 characters of the latest simple query or Parse text (never
    /// parameter values).
    pub fn set_last_query(&self, text: &str) {
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut q = self.last_query.lock();
        q.clear();
        q.push_str(&text[..end]);
    }

    /// The latest query text (first 200 characters).
    pub fn last_query(&self) -> String {
        self.last_query.lock().clone()
    }

    /// The client's process (pid and command line): SO_PEERCRED for unix-socket clients, the
    /// owner of the socket in /proc for loopback TCP clients; looked up once, on demand.
    pub fn process(&self) -> Option<(i32, String)> {
        self.process
            .get_or_init(|| {
                let pid = self.peer_pid.or_else(|| match &self.peer {
                    PeerAddr::Tcp(a) if a.ip().is_loopback() => crate::procfs::tcp_owner(*a, self.local?),
                    _ => None,
                })?;
                Some((pid, crate::procfs::cmdline(pid).unwrap_or_default()))
            })
            .clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo::new(PeerAddr::Unix, None, None, "u", "d", "app")
    }

    #[tokio::test]
    async fn an_idle_timeout_ends_an_idle_client_but_not_one_that_just_became_busy() {
        let c = client();
        let limit = Duration::from_millis(10);
        let later = Instant::now() + Duration::from_millis(50);
        // Idle long enough: killed, and an idle session sees it.
        c.kill_if_idle_for(limit, later);
        assert_eq!(c.killed(false).await, Kill::IdleTimeout(limit));
        // The client sent a request as the sweep ran: a busy session withdraws the kill...
        let busy = tokio::time::timeout(Duration::from_millis(50), c.killed(true)).await;
        assert!(busy.is_err(), "a busy client must not be ended for idleness");
        // ...so the next idle wait does not see it either, while an operator's kill stands.
        let idle = tokio::time::timeout(Duration::from_millis(50), c.killed(false)).await;
        assert!(idle.is_err());
        c.kill("admin forced disconnect");
        let k = c.killed(true).await;
        assert_eq!(k, Kill::Operator("admin forced disconnect".into()));
        assert_eq!(k.error().sqlstate, "57P01");
    }

    #[test]
    fn a_client_that_is_not_idle_is_never_killed_for_idleness() {
        let c = client();
        c.set_phase(ClientPhase::Active, None);
        c.kill_if_idle_for(Duration::from_millis(1), Instant::now() + Duration::from_secs(60));
        assert!(c.kill_reason.lock().is_none());
    }
}
