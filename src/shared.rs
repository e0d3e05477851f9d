//! `Shared`: what every task of one pooler sees — the config snapshot, the pools, the client
//! registry (with admission's counts), the SCRAM verifier cache and the shutdown signal. Passed
//! as an `Arc`, never reached through a global.

use crate::auth::VerifierCache;
use crate::clients::{ClientInfo, ClientRegistry};
use crate::config::Config;
use crate::pool::{InstrumentSource, PoolRegistry};
use crate::protocol::PgError;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

mod view;

// Admission's guards (clients/admission.rs), under the paths the session's login code uses.
pub use crate::clients::ClientSlot;
pub(crate) use crate::clients::{ConsoleSeat, LoginPlace, LoginTicket};

/// The FATAL for a full max_client_conn (with the count of client connections now).
pub(crate) fn max_client_conn_error(shared: &Shared) -> PgError {
    crate::clients::max_client_conn_error(&shared.clients)
}

/// State shared by the listener and all sessions of one pooler.
pub struct Shared {
    /// The configuration in force (swapped whole on reload).
    pub config: ArcSwap<Config>,
    /// Pools by (database, user).
    pub pools: PoolRegistry,
    /// Every logged-in client (by the cancel key sluice issued it), and admission's counts.
    pub clients: Arc<ClientRegistry>,
    /// SCRAM verifiers derived from plaintext passwords.
    pub verifiers: VerifierCache,
    /// Random per-process key for mock SCRAM verifiers of unknown users.
    pub instance_secret: [u8; 32],
    /// TLS contexts, hba rules and auth_query answers, kept per config snapshot.
    pub security: crate::security::Security,
    lifecycle: watch::Sender<Lifecycle>,
    /// Leak suspects and history (SHOW LEAKS, metrics).
    pub leaks: crate::observe::leaks::LeakTracker,
    /// Averages over the last stats_period, for SHOW STATS.
    pub stats_history: crate::observe::stats::StatsHistory,
    /// Databases closed to new clients by DISABLE.
    disabled: Mutex<std::collections::HashSet<String>>,
    /// SUSPEND is in force.
    suspended: watch::Sender<bool>,
    /// Open admin console sessions (a SUSPEND ends when the last one leaves).
    consoles: AtomicUsize,
    /// The pools' LISTEN hubs and listening connections (transaction mode).
    pub(crate) notify: crate::notify::Notifications,
    /// This pooler's Prometheus registry, when `[metrics]` is configured.
    pub metrics: Option<Arc<crate::observe::prometheus::Metrics>>,
    /// The `logfile`, when the binary opened one: reopened by every reload (for logrotate).
    pub log_file: std::sync::OnceLock<Arc<crate::logging::LogFile>>,
    /// Where idle sessions and unknown cancel keys go while an upgrade hands this process's
    /// clients to another (docs/upgrades.md); closed otherwise.
    pub(crate) handover: crate::upgrade::Outbox,
    /// In a new process during an upgrade: clients adopted with LISTEN channels, waiting for
    /// the notifications the old process forwards (docs/upgrades.md, "LISTEN").
    pub(crate) joins: crate::upgrade::Joins,
    /// The per-core runtimes (`runtime = "per-core"`), set once at start: sessions that do not
    /// come through an accept loop (clients adopted in an upgrade) are placed on them too.
    pub(crate) workers: std::sync::OnceLock<Arc<crate::workers::Workers>>,
}

/// How a shutdown waits before the process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Stop accepting; close each client once it holds no server (transactions finish); exit
    /// when none is left (SIGINT, SHUTDOWN WAIT_FOR_SERVERS).
    WaitForServers,
    /// Stop accepting; exit when the clients have all left by themselves (SIGTERM,
    /// SHUTDOWN WAIT_FOR_CLIENTS).
    WaitForClients,
}

/// Where the pooler is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Serving.
    Running,
    /// Not accepting; waiting as the mode says.
    Draining(ShutdownMode),
    /// Closing everything now.
    Exit,
}

impl Shared {
    /// Builds the shared state for a config.
    pub fn new(config: Config) -> Arc<Shared> {
        let (lifecycle, _) = watch::channel(Lifecycle::Running);
        crate::server::resolve::set_ttls(config.pooler.dns_max_ttl, config.pooler.dns_nxdomain_ttl);
        let metrics = config
            .metrics
            .as_ref()
            .and_then(|m| m.listen.as_ref())
            .map(|_| crate::observe::prometheus::Metrics::new());
        Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            pools: PoolRegistry::new(metrics.clone().map(|m| m as Arc<dyn InstrumentSource>)),
            clients: Arc::default(),
            verifiers: VerifierCache::default(),
            instance_secret: rand::random(),
            security: crate::security::Security::default(),
            lifecycle,
            disabled: Mutex::new(std::collections::HashSet::new()),
            stats_history: crate::observe::stats::StatsHistory::default(),
            leaks: crate::observe::leaks::LeakTracker::default(),
            suspended: watch::channel(false).0,
            consoles: AtomicUsize::new(0),
            notify: Default::default(),
            metrics,
            log_file: std::sync::OnceLock::new(),
            handover: crate::upgrade::Outbox::default(),
            joins: crate::upgrade::Joins::default(),
            workers: std::sync::OnceLock::new(),
        })
    }

    /// Admits a new connection to log in (see [`ClientRegistry::begin_login`]): a ticket under
    /// its IP address and a place in max_client_conn. On refusal, the FATAL to send.
    pub(crate) fn begin_login(
        &self,
        peer: &crate::clients::PeerAddr,
    ) -> Result<(LoginTicket, LoginPlace), PgError> {
        self.clients.begin_login(peer, &self.config.load().pooler)
    }

    /// After a console user authenticated: a seat in the console's reserve, or the login's
    /// max_client_conn slot. None: neither.
    pub(crate) fn seat_console(&self, place: LoginPlace) -> Option<ConsoleSeat> {
        self.clients.seat_console(place)
    }

    /// Turns a login's place into a client's slot, if the per-database and per-user client
    /// limits (0: none) allow; a console-only place is refused. On refusal, names the limit.
    pub(crate) fn admit_client(
        &self,
        place: LoginPlace,
        database: (&str, usize),
        user: (&str, usize),
    ) -> Result<ClientSlot, &'static str> {
        self.clients.admit(place, database, user)
    }

    /// Lists a logged-in client until the returned guard drops. The guard takes over `slot`:
    /// the limits it counts the client in are given back with the registration (by the names in
    /// `info`, which the slot was taken for).
    pub fn register_client(self: &Arc<Self>, info: Arc<ClientInfo>, slot: ClientSlot) -> Registered {
        let peer_id = self.config.load().pooler.peer_id;
        let counted = self.clients.register(&info, slot, peer_id);
        Registered {
            shared: self.clone(),
            counted,
            info,
        }
    }

    /// [`Shared::register_client`] for a client an upgrade handed over, under the cancel key
    /// it already has; None when that key is taken here.
    pub(crate) fn register_adopted(
        self: &Arc<Self>,
        info: Arc<ClientInfo>,
        slot: ClientSlot,
        key: crate::clients::CancelKey,
    ) -> Option<Registered> {
        let counted = self.clients.register_as(&info, slot, key)?;
        Some(Registered {
            shared: self.clone(),
            counted,
            info,
        })
    }

    /// Every logged-in client, oldest first.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut v = self.clients.clients();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Calls `f` on every logged-in client (in no order), holding the registry briefly.
    pub fn for_each_client(&self, f: impl FnMut(&ClientInfo)) {
        self.clients.for_each_client(f);
    }

    /// max_client_conn slots taken: logged-in clients and logins in progress (console sessions
    /// in the console reserve excluded).
    pub fn client_count(&self) -> usize {
        self.clients.client_count()
    }

    /// Logins in progress (SHOW LISTS login_clients).
    pub fn logins_in_progress(&self) -> usize {
        self.clients.logins_in_progress()
    }

    /// Begins a shutdown: draining in `mode`, or exiting at once (None, or a second request).
    pub fn shutdown(&self, mode: Option<ShutdownMode>) {
        self.lifecycle.send_modify(|l| {
            *l = match (*l, mode) {
                (Lifecycle::Running, Some(m)) => Lifecycle::Draining(m),
                _ => Lifecycle::Exit,
            }
        });
    }

    /// DISABLE (true) or ENABLE (false) new client connections to a database.
    pub fn set_disabled(&self, database: &str, disabled: bool) {
        let mut set = self.disabled.lock();
        if disabled {
            set.insert(database.to_string());
        } else {
            set.remove(database);
        }
    }

    /// True when DISABLE is in force for the database.
    pub fn is_disabled(&self, database: &str) -> bool {
        self.disabled.lock().contains(database)
    }

    /// Records SUSPEND/RESUME (for SHOW STATE).
    pub fn set_suspended(&self, on: bool) {
        self.suspended.send_replace(on);
    }

    /// True while SUSPEND is in force.
    pub fn is_suspended(&self) -> bool {
        *self.suspended.borrow()
    }

    /// Counts an open console session until the guard drops; when the last one leaves during
    /// SUSPEND, the pooler resumes by itself (nobody could connect to say RESUME otherwise).
    pub fn console_opened(self: &Arc<Self>) -> ConsoleGuard {
        self.consoles.fetch_add(1, Ordering::AcqRel);
        ConsoleGuard { shared: self.clone() }
    }

    /// Console sessions open now (a drain does not wait for them).
    pub(crate) fn console_count(&self) -> usize {
        self.consoles.load(Ordering::Acquire)
    }

    /// A receiver of SUSPEND/RESUME changes (the listeners stop accepting while suspended).
    pub fn suspend_signal(&self) -> watch::Receiver<bool> {
        self.suspended.subscribe()
    }

    /// Where the pooler is now.
    pub fn lifecycle(&self) -> Lifecycle {
        *self.lifecycle.borrow()
    }

    /// A receiver of lifecycle changes.
    pub fn lifecycle_signal(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// Re-reads the configuration file and applies it: pools get their new settings, added
    /// databases appear, removed ones drain. An invalid file changes nothing.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let current = self.config.load_full();
        let path = std::path::Path::new(&current.origin);
        if !path.is_file() {
            return Err(crate::config::ConfigError::new(
                &current.origin,
                0,
                0,
                "",
                "this configuration was not loaded from a file; nothing to reload",
            ));
        }
        let fresh = crate::config::Config::load(path)?;
        self.apply_config(fresh)
            .map_err(|e| crate::config::ConfigError::new(&current.origin, 0, 0, "", &e))
    }

    /// Installs a new configuration (RELOAD, SET) and applies it to existing pools. The TLS
    /// contexts and hba rules it names are built first: when a file cannot be used (a
    /// certificate half rotated, an hba file with an error) nothing changes, so a reload never
    /// ends client TLS or drops the server leg to plaintext. The error names the key at fault.
    pub fn apply_config(&self, config: Config) -> Result<(), String> {
        let config = Arc::new(config);
        let tls = self.security.server_tls(&config)?;
        if let Err(e) = self.security.hba(&config).as_ref() {
            return Err(e.clone());
        }
        crate::server::resolve::set_ttls(config.pooler.dns_max_ttl, config.pooler.dns_nxdomain_ttl);
        self.config.store(config.clone());
        self.pools.apply(&config, &tls);
        Ok(())
    }
}

/// Keeps a client in the registry (and its cancel key, once issued); removes both when dropped.
pub struct Registered {
    shared: Arc<Shared>,
    info: Arc<ClientInfo>,
    /// Whether the client's slot counted it under its database and its user name.
    counted: (bool, bool),
}

impl Registered {
    /// The registered client.
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.info
    }

    /// The registry the client is in.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The client's cancel key (BackendKeyData), issued with the registration and retired
    /// with it.
    pub fn cancel_key(&self) -> crate::clients::CancelKey {
        self.info.cancel_key().unwrap_or_default()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.clients.unregister(&self.info, self.counted);
    }
}

/// One open console session.
pub struct ConsoleGuard {
    shared: Arc<Shared>,
}

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        if self.shared.consoles.fetch_sub(1, Ordering::AcqRel) == 1 && self.shared.is_suspended() {
            tracing::warn!("the last console session left during SUSPEND; resuming");
            for pool in self.shared.pools.all() {
                pool.resume();
            }
            self.shared.set_suspended(false);
        }
    }
}
