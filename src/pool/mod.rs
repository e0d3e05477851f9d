//! Pools of server connections, one per (database, user): a bounded number of slots, an idle
//! queue, a FIFO queue of waiting clients, and one release path that never hands a dirty server on.

mod checkout;
mod registry;
mod release;

pub use checkout::CheckoutError;
pub use registry::PoolRegistry;
pub use release::Disposition;

use crate::config::PoolMode;
use crate::server::{ServerConn, ServerTarget};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Identifies a pool: the database name clients use and the client's user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Database name as clients know it.
    pub database: String,
    /// Client user name.
    pub user: String,
}

/// How a pool behaves; fixed at creation.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most server connections open at once (including ones being opened or cleaned).
    pub pool_size: usize,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Where its servers connect.
    pub target: ServerTarget,
    /// Limit for opening and logging in to one server.
    pub connect_timeout: Duration,
    /// Run on servers released in session mode (empty: none).
    pub reset_query: String,
}

/// A server connection together with the pool slot it occupies. Dropping it closes the
/// connection and frees the slot: the safe default for anything not released explicitly.
#[derive(Debug)]
pub struct PooledServer {
    /// The connection.
    pub conn: ServerConn,
    _permit: SlotPermit,
}

/// One unit of a pool's capacity. Dropping an armed permit frees the slot or passes it to the
/// oldest waiter.
#[derive(Debug)]
struct SlotPermit {
    pool: Arc<Pool>,
    armed: bool,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if self.armed {
            self.pool.slot_freed();
        }
    }
}

/// What a waiting client is handed.
enum Grant {
    /// An idle, clean server.
    Server(Box<PooledServer>),
    /// A free slot: open a new server with it.
    Slot(SlotPermit),
}

struct Waiter {
    id: u64,
    since: Instant,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct PoolState {
    idle: VecDeque<PooledServer>,
    waiters: VecDeque<Waiter>,
    slots_used: usize,
    next_waiter_id: u64,
}

/// A pool of server connections for one (database, user).
pub struct Pool {
    /// Which pool this is.
    pub key: PoolKey,
    /// Its settings.
    pub settings: PoolSettings,
    state: Mutex<PoolState>,
    welcome: Mutex<Option<Arc<BTreeMap<String, String>>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a pool's counts, derived from its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    /// Servers idle in the pool.
    pub idle: usize,
    /// Slots in use (idle + lent out + being opened or cleaned).
    pub slots_used: usize,
    /// Clients waiting for a server.
    pub waiting: usize,
    /// How long the oldest waiter has waited.
    pub max_wait: Duration,
}

impl Pool {
    /// Creates an empty pool.
    pub fn new(key: PoolKey, settings: PoolSettings) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            settings,
            state: Mutex::new(PoolState::default()),
            welcome: Mutex::new(None),
        })
    }

    /// Counts for monitoring.
    pub fn counts(&self) -> PoolCounts {
        let st = self.state.lock();
        PoolCounts {
            idle: st.idle.len(),
            slots_used: st.slots_used,
            waiting: st.waiters.len(),
            max_wait: st.waiters.front().map_or(Duration::ZERO, |w| w.since.elapsed()),
        }
    }

    /// The ParameterStatus set a server of this pool reported at login (what clients are told
    /// when they log in), once one server has been opened.
    pub fn welcome_params(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.welcome.lock().clone()
    }

    fn remember_welcome(&self, conn: &ServerConn) {
        let mut w = self.welcome.lock();
        if w.is_none() {
            *w = Some(Arc::new(conn.params.clone()));
        }
    }

    /// A slot's permit was dropped: pass the slot to the oldest live waiter, or free it.
    fn slot_freed(self: &Arc<Self>) {
        let mut st = self.state.lock();
        while let Some(waiter) = st.waiters.pop_front() {
            let permit = SlotPermit {
                pool: self.clone(),
                armed: true,
            };
            match waiter.tx.send(Grant::Slot(permit)) {
                Ok(()) => return,
                Err(Grant::Slot(mut p)) => p.armed = false,
                Err(Grant::Server(_)) => unreachable!("a slot grant came back as a server"),
            }
        }
        st.slots_used = st.slots_used.saturating_sub(1);
    }

    /// Closes all idle servers (used at shutdown).
    pub fn close_idle(&self) {
        let idle: Vec<PooledServer> = self.state.lock().idle.drain(..).collect();
        drop(idle);
    }
}
