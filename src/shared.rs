//! `Shared`: what every task of one pooler sees — the config snapshot, the pools, the cancel
//! registry, the SCRAM verifier cache, the client count and the shutdown signal. Passed as an
//! `Arc`, never reached through a global.

use crate::auth::VerifierCache;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::{InstrumentSource, PoolRegistry};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

mod admission;
mod view;
pub(crate) use admission::max_client_conn_error;
pub(crate) use admission::{ConsoleSeat, LoginPlace};

/// State shared by the listener and all sessions of one pooler.
pub struct Shared {
    /// The configuration in force (swapped whole on reload).
    pub config: ArcSwap<Config>,
    /// Pools by (database, user).
    pub pools: PoolRegistry,
    /// Cancel keys issued to clients.
    pub cancels: CancelRegistry,
    /// SCRAM verifiers derived from plaintext passwords.
    pub verifiers: VerifierCache,
    /// Random per-process key for mock SCRAM verifiers of unknown users.
    pub instance_secret: [u8; 32],
    /// TLS contexts, hba rules and auth_query answers, kept per config snapshot.
    pub security: crate::security::Security,
    /// max_client_conn's slots taken: logged-in clients and logins in progress.
    clients: AtomicUsize,
    /// Logins in progress.
    logins: AtomicUsize,
    /// Logins in progress per client IP address (entries at zero are removed).
    logins_by_addr: Mutex<HashMap<std::net::IpAddr, u32>>,
    /// Logins holding a console-only place while max_client_conn is full.
    login_overflow: AtomicUsize,
    /// Logged-in console sessions in the console's reserve.
    console_seats: AtomicUsize,
    /// Failed logins per client address, which slow down that address's next failures.
    pub(crate) failed_logins: crate::login_throttle::FailedLogins,
    /// Every logged-in client, by id (for the console and leak reports).
    /// Connected clients per database [0] and per user [1].
    /// Clients per database and per user name. The keys double as the names' one shared copy:
    /// every client of a database points at the same `Arc<str>`.
    client_counts: Mutex<[HashMap<Arc<str>, usize>; 2]>,
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
    /// This pooler's Prometheus registry, when `[metrics]` is configured.
    pub metrics: Option<Arc<crate::observe::prometheus::Metrics>>,
    /// The `logfile`, when the binary opened one: reopened by every reload (for logrotate).
    pub log_file: std::sync::OnceLock<Arc<crate::logging::LogFile>>,
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
        let metrics = config
            .metrics
            .as_ref()
            .and_then(|m| m.listen.as_ref())
            .map(|_| crate::observe::prometheus::Metrics::new());
        Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            pools: PoolRegistry::new(metrics.clone().map(|m| m as Arc<dyn InstrumentSource>)),
            cancels: CancelRegistry::default(),
            verifiers: VerifierCache::default(),
            instance_secret: rand::random(),
            security: crate::security::Security::default(),
            clients: AtomicUsize::new(0),
            logins: AtomicUsize::new(0),
            logins_by_addr: Mutex::new(HashMap::new()),
            login_overflow: AtomicUsize::new(0),
            console_seats: AtomicUsize::new(0),
            failed_logins: Default::default(),
            client_counts: Mutex::new([HashMap::new(), HashMap::new()]),
            lifecycle,
            disabled: Mutex::new(std::collections::HashSet::new()),
            stats_history: crate::observe::stats::StatsHistory::default(),
            leaks: crate::observe::leaks::LeakTracker::default(),
            suspended: watch::channel(false).0,
            consoles: AtomicUsize::new(0),
            metrics,
            log_file: std::sync::OnceLock::new(),
        })
    }

    /// Turns a login's place into a client's slot, if the per-database and per-user client
    /// limits (0: none) allow; a console-only place is refused. On refusal, names the limit.
    pub(crate) fn admit_client(
        &self,
        place: LoginPlace,
        database: (&str, usize),
        user: (&str, usize),
    ) -> Result<ClientSlot, &'static str> {
        // From here on, dropping `slot` gives back whatever it has taken.
        let mut slot = match place {
            LoginPlace::Client(slot) => slot,
            LoginPlace::Overflow(_) => return Err("max_client_conn"),
        };
        let mut counts = self.client_counts.lock();
        let refused = 'check: {
            for (kind, (name, max), refusal) in [
                (0usize, database, "max_db_client_connections"),
                (1, user, "max_user_client_connections"),
            ] {
                let shared_name = match counts[kind].get_key_value(name) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                let n = counts[kind].entry(shared_name.clone()).or_insert(0);
                if max > 0 && *n >= max {
                    break 'check Some(refusal);
                }
                *n += 1;
                let taken = Some(shared_name);
                if kind == 0 {
                    slot.database = taken;
                } else {
                    slot.user = taken;
                }
            }
            None
        };
        drop(counts); // before `slot` can drop: its Drop takes the same lock
        match refused {
            Some(limit) => Err(limit),
            None => Ok(slot),
        }
    }

    /// Lists a logged-in client until the returned guard drops. The guard takes over `slot`:
    /// the limits it counts the client in are given back with the registration (by the names in
    /// `info`, which the slot was taken for).
    pub fn register_client(
        self: &Arc<Self>,
        info: Arc<crate::client_info::ClientInfo>,
        mut slot: ClientSlot,
    ) -> Registered {
        self.cancels.issue(&info);
        slot.handed_over = true;
        Registered {
            shared: self.clone(),
            counted: (slot.database.is_some(), slot.user.is_some()),
            info,
        }
    }

    /// Gives back a client's max_client_conn slot and its per-database and per-user counts.
    fn release_client_slot(&self, database: Option<&str>, user: Option<&str>) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
        let mut counts = self.client_counts.lock();
        for (kind, name) in [(0usize, database), (1, user)] {
            if let Some(name) = name
                && let Some(n) = counts[kind].get_mut(name)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts[kind].remove(name);
                }
            }
        }
    }

    /// Every logged-in client, oldest first.
    pub fn clients(&self) -> Vec<Arc<crate::client_info::ClientInfo>> {
        let mut v = self.cancels.clients();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Calls `f` on every logged-in client (in no order), holding the registry briefly.
    pub fn for_each_client(&self, f: impl FnMut(&crate::client_info::ClientInfo)) {
        self.cancels.for_each_client(f);
    }

    /// max_client_conn slots taken: logged-in clients and logins in progress (console sessions
    /// in the console reserve excluded).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
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
        let tls = match self.security.tls(&config).as_ref() {
            Ok(t) => t.server.clone(),
            Err(e) => return Err(e.clone()),
        };
        if let Err(e) = self.security.hba(&config).as_ref() {
            return Err(e.clone());
        }
        self.config.store(config.clone());
        self.pools.apply(&config, &tls);
        Ok(())
    }
}

/// One of max_client_conn's slots (and of the database's and user's client limits), released
/// when the client's session ends.
pub struct ClientSlot {
    shared: Arc<Shared>,
    database: Option<Arc<str>>,
    user: Option<Arc<str>>,
    /// A [`Registered`] gives the slot back instead (set by [`Shared::register_client`]).
    handed_over: bool,
}

impl ClientSlot {
    /// The database and user names the slot counts the client under, as shared copies.
    pub fn names(&self) -> Option<(Arc<str>, Arc<str>)> {
        Some((self.database.clone()?, self.user.clone()?))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if !self.handed_over {
            self.shared
                .release_client_slot(self.database.as_deref(), self.user.as_deref());
        }
    }
}

/// Keeps a client in the registry (and its cancel key, once issued); removes both when dropped.
pub struct Registered {
    shared: Arc<Shared>,
    info: Arc<crate::client_info::ClientInfo>,
    /// Whether the client's slot counted it under its database and its user name.
    counted: (bool, bool),
}

impl Registered {
    /// The registered client.
    pub fn info(&self) -> &Arc<crate::client_info::ClientInfo> {
        &self.info
    }

    /// The registry the client is in.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The client's cancel key (BackendKeyData), issued with the registration and retired
    /// with it.
    pub fn cancel_key(&self) -> crate::cancel::CancelKey {
        self.info.cancel_key().unwrap_or_default()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(key) = self.info.cancel_key() {
            self.shared.cancels.retire(key);
        }
        let (database, user) = self.counted;
        self.shared.release_client_slot(
            database.then_some(&*self.info.database),
            user.then_some(&*self.info.user),
        );
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
