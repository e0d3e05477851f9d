//! Pools of server connections, one per (database, user): a bounded number of slots (plus a
//! reserve for clients that waited), an idle queue, a FIFO queue of waiting clients, limits shared
//! with other pools of the same database or user, a memory of failing logins, and one release path
//! that never hands a dirty server on.

mod autodb;
mod checkout;
mod control;
mod dedicated;
mod diagnose;
mod handover;
mod hosts;
mod hot;
mod instruments;
mod limits;
mod login_health;
mod maintenance;
mod reclaim;
mod registry;
mod release;
mod settings;
mod shares;
mod stats;

pub use autodb::{MAX_AUTO_POOLS, too_many_auto_pools};
pub use checkout::CheckoutError;
pub use control::ServerCounts;
pub use dedicated::DedicatedServer;
pub(crate) use diagnose::client_origin;
pub(crate) use handover::LeavingServer;
pub use hosts::{HaSettings, Health, HostState, Role};
pub(crate) use instruments::RECYCLE_REASONS;
pub use instruments::{InstrumentSource, PoolMetrics, Recycle};
pub use limits::LimitGroup;
pub use registry::PoolRegistry;
pub use release::Disposition;
pub use settings::settings_for;
pub use shares::{GroupFigures, MAX_SHARE_GROUPS, OVERFLOW_GROUP, ShareSettings};
pub use stats::{PoolStats, StatsSnapshot};

use crate::config::PoolMode;
use crate::server::{ServerConn, ServerInfo, ServerTarget};
use login_health::LoginHealth;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// `database/user`, as PgBouncer names a pool in its log lines.
impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.user)
    }
}

/// How a pool behaves; fixed at creation.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most server connections open at once (including ones being opened or cleaned).
    pub pool_size: usize,
    /// Servers kept open even when idle.
    pub min_pool_size: usize,
    /// Extra slots for clients that waited `reserve_pool_timeout`.
    pub reserve_pool_size: usize,
    /// Wait after which a client may use the reserve.
    pub reserve_pool_timeout: Duration,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Transaction mode: what session state that cannot move does (pin_session_state).
    pub pin: crate::config::PinSessionState,
    /// Where its servers connect.
    pub target: ServerTarget,
    /// Limit for opening and logging in to one server.
    pub connect_timeout: Duration,
    /// Run on servers released in session mode (empty: none).
    pub reset_query: String,
    /// Run the reset query after every transaction in transaction mode too.
    pub reset_query_always: bool,
    /// Servers are closed after about this long (0: never).
    pub server_lifetime: Duration,
    /// Idle servers are closed after this long (0: never).
    pub server_idle_timeout: Duration,
    /// Query checking a server idle longer than `server_check_delay` (empty: none).
    pub server_check_query: String,
    /// See `server_check_query`.
    pub server_check_delay: Duration,
    /// Cap on the back-off between failing login attempts.
    pub server_login_retry: Duration,
    /// How long clients wait out an outage of a server that worked (a PostgreSQL restart)
    /// instead of getting the cached login error.
    pub server_outage_grace: Duration,
    /// Statements each server keeps prepared for clients (transaction mode; 0: named prepared
    /// statements pass through untouched).
    pub max_prepared_statements: usize,
    /// What one client may keep prepared (max_client_prepared_statements/_bytes).
    pub client_prepared_limit: ClientPreparedLimit,
    /// Fair shares between groups of clients, and reclaim of idle transactions under pressure.
    pub shares: ShareSettings,
    /// The host list, target_session_attrs and load_balance_hosts.
    pub ha: HaSettings,
    /// Longest a client waits for a server of this pool (query_wait_timeout: the user's, the
    /// database's or the global one).
    pub query_wait_timeout: Duration,
    /// Idle servers are handed out oldest-released first (server_round_robin) instead of
    /// last-released first.
    pub round_robin: bool,
    /// The time limits on a client holding a server (global settings, copied here so a
    /// transaction reads them with the one settings load it makes anyway).
    pub held_limits: HeldLimits,
}

/// The `[pooler]` time limits enforced on a client while it holds a server (zero: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeldLimits {
    /// query_timeout.
    pub query: Duration,
    /// idle_transaction_timeout.
    pub idle_transaction: Duration,
    /// transaction_timeout.
    pub transaction: Duration,
    /// client_idle_timeout.
    pub client_idle: Duration,
}

/// The most one client may keep prepared through sluice: its statements are held in sluice's
/// memory for as long as it stays connected, so the client, not the pooler, must run out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPreparedLimit {
    /// max_client_prepared_statements.
    pub statements: usize,
    /// max_client_prepared_bytes (statement names and Parse bodies).
    pub bytes: usize,
}

/// A server connection together with the pool slot it occupies. Dropping it closes the
/// connection and frees the slot: the safe default for anything not released explicitly.
#[derive(Debug)]
pub struct PooledServer {
    /// The connection (boxed once for its whole life: a checkout moves the server through
    /// several futures, and a pointer moves cheaper than the connection's state).
    pub conn: Box<ServerConn>,
    /// When this server is due for replacement (server_lifetime, jittered per server).
    expires_at: Option<Instant>,
    permit: SlotPermit,
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        let pool = &self.permit.pool;
        pool.state.lock().servers.remove(&self.conn.id);
        pool.servers_changed();
    }
}

/// One unit of a pool's capacity. Dropping an armed permit passes the slot to the oldest waiter
/// or frees it (and the units it holds in the pool's limit groups).
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
    /// Who waits (fair shares count the servers its group holds).
    client: Arc<crate::clients::ClientInfo>,
    /// Its share group (empty while shares are off).
    group: String,
}

#[derive(Default)]
struct PoolState {
    idle: VecDeque<PooledServer>,
    waiters: VecDeque<Waiter>,
    slots_used: usize,
    next_waiter_id: u64,
    /// Every open server of the pool (idle, lent or cleaning), by id.
    servers: HashMap<u64, Arc<ServerInfo>>,
    /// (server id, client id) of servers whose holders were asked to give them back
    /// (idle_transaction_reclaim_timeout) and have not yet; at most one per server.
    reclaiming: Vec<(u64, u64)>,
    /// Share groups that released a server lately (fair shares count them as present).
    recent: shares::Recent,
}

impl PoolState {
    /// Takes the idle server to lend next: the one released last (PgBouncer's default: the
    /// fewest servers carry the load and the rest can time out), or with `round_robin`
    /// (server_round_robin) the one released first, so load spreads over every server. Under
    /// the per-core runtime, without `round_robin`, the last released one whose socket is
    /// registered on the calling worker is preferred; any other follows (one idle queue for
    /// every thread, so a waiter never waits while any server is idle). With `round_robin` the
    /// order alone decides: preferring the worker's own servers would keep each worker on its
    /// own few, which is what the setting exists to prevent.
    #[inline(always)] // once per checkout: the common case costs less than the call
    fn pop_idle(&mut self, round_robin: bool) -> Option<PooledServer> {
        if round_robin {
            return self.idle.pop_front();
        }
        let here = crate::workers::current();
        // Usually the last released is the worker's own: taken without a search or a call.
        if here == 0 || self.idle.back().is_some_and(|s| s.conn.home() == here) {
            return self.idle.pop_back();
        }
        self.pop_idle_searching(here)
    }

    /// [`PoolState::pop_idle`] when the last released server is not worker `here`'s: the last
    /// released one that is, else the last released.
    #[inline(never)] // the rare case, kept out of the callers
    fn pop_idle_searching(&mut self, here: usize) -> Option<PooledServer> {
        if let Some(i) = self.idle.iter().rposition(|s| s.conn.home() == here) {
            return self.idle.remove(i);
        }
        self.idle.pop_back()
    }
}

/// A pool of server connections for one (database, user).
pub struct Pool {
    /// Which pool this is.
    pub key: PoolKey,
    settings: arc_swap::ArcSwap<PoolSettings>,
    /// What a transaction needs of `settings` ([`hot::Hot`]), rewritten with them under
    /// the state lock (so two changes at once cannot leave it behind the settings).
    hot: std::sync::atomic::AtomicU64,
    /// PAUSE: new checkouts wait until RESUME.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// A server closed, freed its slot or (while paused) went idle: PAUSE and WAIT_CLOSE look
    /// again.
    servers_changed: tokio::sync::Notify,
    /// RECONNECT: servers opened before the current generation are closed when released.
    generation: std::sync::atomic::AtomicU64,
    state: Mutex<PoolState>,
    welcome: Mutex<Option<Arc<BTreeMap<String, String>>>>,
    login: LoginHealth,
    /// What is known of each host of the list (used only when `settings.ha` is active).
    hosts: hosts::HostSet,
    /// The database-wide and user-wide limits this pool counts against.
    groups: [Arc<LimitGroup>; 2],
    /// Transaction, query, byte and time counters.
    pub stats: PoolStats,
    /// Prepared statements whose plans PostgreSQL refused after a schema change.
    pub plans: crate::server::statements::PlanInvalidations,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Creates an empty pool counting against `db_group` and `user_group`.
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        db_group: Arc<LimitGroup>,
        user_group: Arc<LimitGroup>,
        metrics: PoolMetrics,
    ) -> Arc<Pool> {
        let login = LoginHealth::new();
        let pool = Arc::new(Pool {
            key,
            hot: std::sync::atomic::AtomicU64::new(hot::Hot::of(&settings).bits()),
            settings: arc_swap::ArcSwap::from_pointee(settings),
            paused: std::sync::atomic::AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            servers_changed: tokio::sync::Notify::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(PoolState::default()),
            welcome: Mutex::new(None),
            login,
            hosts: Default::default(),
            groups: [db_group, user_group],
            stats: PoolStats::with_metrics(metrics),
            plans: Default::default(),
        });
        for g in &pool.groups {
            g.join(&pool);
        }
        pool
    }

    /// Each host's role and health, for SHOW HOSTS and the metrics (empty until the pool's
    /// first login on a host list).
    pub fn host_states(&self) -> Vec<HostState> {
        self.hosts.snapshot()
    }

    /// The settings in force (replaced whole by RELOAD and SET).
    pub fn settings(&self) -> arc_swap::Guard<Arc<PoolSettings>> {
        self.settings.load()
    }

    /// What a transaction's checkout and release need of the settings, without loading them.
    #[inline]
    fn hot(&self) -> hot::Hot {
        hot::Hot::from_bits(self.hot.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Replaces the settings (RELOAD, SET); a smaller pool shrinks as servers are released.
    /// The secret servers log in with is derived state: the pool keeps what clients' logins
    /// taught it unless the configured secret changed ([`settings::reloaded_secret`]).
    /// Servers opened for another address, database, user or pool mode are replaced (as by
    /// RECONNECT): a server lent in session mode keeps whatever its client left on it, and
    /// after a switch to transaction mode it would otherwise be handed on unreset.
    pub fn update_settings(&self, settings: PoolSettings) {
        let before = {
            // Under the state lock: of two changes at once, the word follows the later one.
            let _st = self.state.lock();
            let before = self.settings.rcu(|current| {
                let mut next = settings.clone();
                next.target.secret = settings::reloaded_secret(&current.target, &settings.target);
                next
            });
            self.hot.store(
                hot::Hot::of(&settings).bits(),
                std::sync::atomic::Ordering::Release,
            );
            before
        };
        if let Some(what) = settings::servers_outdated(&before, &settings) {
            tracing::info!(database = %self.key.database, user = %self.key.user, changed = what, "replacing the pool's servers after a reload");
            self.reconnect();
        }
    }

    /// A client of `user` has just logged in with `secret` (the configured one, what
    /// auth_query found, or the keys of its SCRAM proof). When the pool logs in as that user
    /// and holds another secret, it takes this one: a pool left with a bare verifier, or with
    /// a password that has since changed, can open servers again from the next login on.
    pub fn learn_login_secret(&self, user: &str, secret: Option<&crate::auth::Secret>) {
        let Some(secret) = secret else { return };
        if !settings::should_learn(&self.settings.load().target, user, secret) {
            return;
        }
        self.settings.rcu(|current| {
            let mut next = PoolSettings::clone(current);
            if settings::should_learn(&current.target, user, secret) {
                next.target.secret = Some(secret.clone());
            }
            next
        });
    }

    /// How long the oldest waiting client has waited (SHOW POOLS maxwait).
    pub fn max_wait(&self) -> Duration {
        self.state
            .lock()
            .waiters
            .front()
            .map_or(Duration::ZERO, |w| w.since.elapsed())
    }

    /// How many servers are open (for systemd's STATUS line).
    pub fn server_count(&self) -> usize {
        self.state.lock().servers.len()
    }

    /// The observable state of every open server.
    pub fn server_infos(&self) -> Vec<Arc<ServerInfo>> {
        self.state.lock().servers.values().cloned().collect()
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

    /// Takes a slot if the pool (with the reserve when allowed) and its groups have room.
    /// Called with the state lock held.
    fn try_take_slot(self: &Arc<Self>, st: &mut PoolState, use_reserve: bool) -> Option<SlotPermit> {
        let limit = self.settings().pool_size
            + if use_reserve {
                self.settings().reserve_pool_size
            } else {
                0
            };
        if st.slots_used >= limit {
            return None;
        }
        let [db, user] = &self.groups;
        if !db.try_acquire() {
            return None;
        }
        if !user.try_acquire() {
            db.release();
            return None;
        }
        st.slots_used += 1;
        Some(SlotPermit {
            pool: self.clone(),
            armed: true,
        })
    }

    /// True when the pool itself has room but a shared limit group does not.
    fn blocked_by_group(&self, st: &PoolState) -> bool {
        st.slots_used < self.settings().pool_size
            && self.groups.iter().any(|g| g.max() > 0 && g.used() >= g.max())
    }

    /// A slot's permit was dropped: pass the slot to the oldest live waiter, or free it.
    fn slot_freed(self: &Arc<Self>) {
        let mut st = self.state.lock();
        while let Some(waiter) = self.take_waiter(&mut st) {
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
        drop(st);
        for g in &self.groups {
            g.release();
        }
        self.servers_changed();
    }

    /// Starts the pool's maintenance task (min_pool_size, idle timeout, lifetime).
    pub fn start_maintenance(self: &Arc<Self>) {
        maintenance::spawn(self);
    }
}
