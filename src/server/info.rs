//! The observable state of one server connection: whether it is idle, lent to a client (and
//! whether that client is mid-query or idle in a transaction), or being cleaned. Shared with the
//! pool so a timeout error can say what the servers are doing and who holds them.

use crate::clients::{CancelInFlight, CancelsInFlight, ClientInfo};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

/// What a lent server is doing for its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// A request is in flight.
    Active,
    /// The client holds it with a transaction open and nothing running.
    IdleInTransaction,
    /// Held outside a transaction (session mode between transactions).
    Idle,
}

/// Where a server is.
#[derive(Debug, Clone)]
pub enum ServerUse {
    /// In the pool's idle queue.
    Idle,
    /// Being opened and logged in.
    Login,
    /// Lent to a client.
    Lent {
        /// The client holding it.
        holder: Arc<ClientInfo>,
        /// When it was lent.
        since: Instant,
        /// What it is doing.
        tx: TxState,
        /// When `tx` last changed.
        tx_since: Instant,
    },
    /// Being rolled back, reset or checked off any client's path.
    Cleaning {
        /// The client whose transaction is being rolled back: until the ROLLBACK is through,
        /// PostgreSQL still shows the transaction, and fair shares count the server as its
        /// group's (a leaker's waiting client may not take another meanwhile). None when no
        /// transaction is left open on it, or fair shares are off (nothing else reads it).
        rolling_back_for: Option<Arc<ClientInfo>>,
    },
}

/// A server's shared, observable state.
#[derive(Debug)]
pub struct ServerInfo {
    /// The server's id.
    pub id: u64,
    /// When it was opened.
    pub opened_at: Instant,
    /// Wall-clock open time (console timestamps).
    pub opened_wall: std::time::SystemTime,
    /// The host and port it is connected to (one of a host list's).
    pub addr: (Arc<str>, u16),
    generation: std::sync::atomic::AtomicU64,
    prepared: std::sync::atomic::AtomicU32,
    state: Mutex<(ServerUse, i32)>,
    /// Cancel requests for this server's backend on their way to PostgreSQL (shared with the
    /// record of the client holding it, through which a client's cancel request notes itself).
    cancels: Arc<CancelsInFlight>,
    /// PostgreSQL answered 25006 (read-only transaction) on it: its host may have become a standby.
    read_only_refused: std::sync::atomic::AtomicBool,
}

impl ServerInfo {
    /// A server being opened on `addr`.
    pub fn new(id: u64, addr: (Arc<str>, u16)) -> ServerInfo {
        let cancels = Arc::new(CancelsInFlight::new(addr.clone()));
        ServerInfo {
            id,
            opened_at: Instant::now(),
            opened_wall: std::time::SystemTime::now(),
            addr,
            generation: std::sync::atomic::AtomicU64::new(0),
            prepared: std::sync::atomic::AtomicU32::new(0),
            state: Mutex::new((ServerUse::Login, 0)),
            cancels,
            read_only_refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A server handed over by an upgrade keeps its open times (SHOW SERVERS connect_time,
    /// server_lifetime).
    pub(crate) fn opened_since(mut self, at: Instant, wall: std::time::SystemTime) -> ServerInfo {
        self.opened_at = at;
        self.opened_wall = wall;
        self
    }

    /// Notes that PostgreSQL refused a write on this server (SQLSTATE 25006).
    pub(crate) fn note_read_only_refusal(&self) {
        self.read_only_refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True once PostgreSQL refused a write on this server (SQLSTATE 25006).
    #[inline]
    pub(crate) fn read_only_refused(&self) -> bool {
        self.read_only_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes a cancel request for this server's backend leaving now; it is in flight until the
    /// returned guard is dropped.
    pub(crate) fn cancel_leaving(&self) -> CancelInFlight {
        self.cancels.leaving()
    }

    /// The count of cancel requests on their way, for the record of the client holding it.
    pub(crate) fn cancels(&self) -> &Arc<CancelsInFlight> {
        &self.cancels
    }

    /// True while a cancel request for this server is on its way.
    #[inline]
    pub(crate) fn cancel_in_flight(&self) -> bool {
        self.cancels.any()
    }

    /// Waits until no cancel request for this server is on its way; false if `limit` passed first.
    pub(crate) async fn cancels_arrived(&self, limit: std::time::Duration) -> bool {
        self.cancels.arrived(limit).await
    }

    /// The pool generation it belongs to (RECONNECT starts a new one).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_generation(&self, g: u64) {
        self.generation.store(g, std::sync::atomic::Ordering::Release);
    }

    /// How many prepared statements sluice keeps on the server (SHOW SERVERS).
    pub fn prepared(&self) -> u32 {
        self.prepared.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_prepared(&self, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.prepared.store(count, std::sync::atomic::Ordering::Relaxed);
    }

    /// Current use.
    pub fn current(&self) -> ServerUse {
        self.state.lock().0.clone()
    }

    /// Backend pid (0 until logged in).
    pub fn backend_pid(&self) -> i32 {
        self.state.lock().1
    }

    pub(crate) fn set_backend_pid(&self, pid: i32) {
        self.state.lock().1 = pid;
    }

    /// Moves the server to a new use (twice per transaction: inlined, the call and the
    /// move of its argument cost as much as the store).
    #[inline(always)]
    pub fn set(&self, use_: ServerUse) {
        self.state.lock().0 = use_;
    }

    /// Updates what a lent server is doing (no-op unless lent and changed).
    pub fn set_tx(&self, tx: TxState) {
        let mut st = self.state.lock();
        if let ServerUse::Lent {
            tx: current,
            tx_since,
            ..
        } = &mut st.0
            && *current != tx
        {
            *current = tx;
            *tx_since = Instant::now();
        }
    }
}
