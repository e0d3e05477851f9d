//! Getting a server: an idle one (checked first), a new one when a slot is free (or a reserve
//! slot once the client waited reserve_pool_timeout), or a place in the FIFO queue until one is
//! released. Waiting is cancel-safe: a waiter that goes away takes itself out of the queue and
//! gives back anything it was handed. While logins fail, clients get the cached error at once,
//! except during a short outage of a server that worked (server_outage_grace): then they wait.

use super::Recycle;
use super::login_health::{Gate, Limits};
use super::{Grant, Pool, PooledServer, SlotPermit, Waiter};
use crate::clients::ClientInfo;
use crate::protocol::{PgError, TxStatus};
use crate::server::{self, ServerError, ServerUse, TxState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why no server could be had.
#[derive(Debug)]
pub enum CheckoutError {
    /// The wait limit passed with every slot busy.
    Timeout(Duration),
    /// Logging in to the server failed (now, or recently: the error is cached). Ready to send.
    Login(PgError),
}

/// As an operator reads it: the wait that ran out, or the server's login error.
impl std::fmt::Display for CheckoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckoutError::Timeout(d) => write!(
                f,
                "no server connection became free within {}",
                crate::config::format_duration(*d)
            ),
            CheckoutError::Login(e) => write!(f, "{e}"),
        }
    }
}

// Short-lived values on the checkout path: boxing the server would cost an allocation per checkout.
#[allow(clippy::large_enum_variant)]
enum Step {
    Ready(PooledServer),
    Open(SlotPermit),
    Wait(WaitGuard, bool),
}

/// A place in the waiter queue; removes itself when dropped.
struct WaitGuard {
    pool: Arc<Pool>,
    id: u64,
    rx: oneshot::Receiver<Grant>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        {
            let mut st = self.pool.state.lock();
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
            }
        }
        // A grant may have arrived after we stopped listening: give it back, outside the lock.
        if let Ok(Grant::Server(server)) = self.rx.try_recv() {
            self.pool.give_back(*server, Instant::now());
        }
        // Fair shares: a server kept idle for want of an eligible waiter may be due now.
        self.pool.hand_on_idle();
        // A Slot grant is dropped with the channel, which frees or passes on the slot.
    }
}

/// What vetting an idle server without I/O decided (the server stays with the caller: moved
/// through fewer hands, it is copied fewer times).
enum Vetted {
    /// Lend it.
    Ready,
    /// Close it (dead, or past its lifetime).
    Discard,
    /// Run server_check_query (with this time limit) first.
    Check(String, Duration),
}

impl Pool {
    /// Gets a server for `client`, waiting at most `wait_limit` for one to become free.
    pub async fn checkout(
        self: &Arc<Self>,
        client: &Arc<ClientInfo>,
        wait_limit: Duration,
    ) -> Result<PooledServer, CheckoutError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait_limit;
        if self.is_paused()
            && tokio::time::timeout_at(deadline, self.wait_resumed())
                .await
                .is_err()
        {
            self.stats.metrics.wait_timeouts.increment(1);
            return Err(CheckoutError::Timeout(wait_limit));
        }
        let reserve = self.settings().reserve_pool_size > 0;
        let server = loop {
            let reserve_due = reserve && started.elapsed() >= self.settings().reserve_pool_timeout;
            match self.next_step(reserve_due, client) {
                Step::Ready(server) => {
                    if let Some(server) = self.vet_idle(server).await {
                        break server;
                    }
                }
                Step::Open(permit) => break Box::pin(self.open(permit, Some(deadline))).await?,
                Step::Wait(guard, group_blocked) => {
                    match self.wait(guard, group_blocked, started, deadline).await {
                        Waited::Server(server) => {
                            if let Some(server) = self.vet_idle(server).await {
                                break server;
                            }
                        }
                        Waited::Slot(permit) => break Box::pin(self.open(permit, Some(deadline))).await?,
                        Waited::Retry => {}
                        Waited::TimedOut => {
                            self.stats.metrics.wait_timeouts.increment(1);
                            return Err(CheckoutError::Timeout(wait_limit));
                        }
                    }
                }
            }
        };
        Self::lend(&server, client, Instant::now());
        Ok(server)
    }

    /// The common case of a checkout, with no await at all: an idle server that needs no check
    /// query, lent at once. None means the full [`Pool::checkout`] has to run (nothing idle,
    /// the pool is paused, or the server's check is due). `now` is the caller's clock reading
    /// (taken in the same poll), so the common path reads the clock no more.
    pub fn try_checkout_now(&self, client: &Arc<ClientInfo>, now: Instant) -> Option<PooledServer> {
        if self.is_paused() {
            return None;
        }
        // What the fast path needs of the settings, without loading them (fair shares do).
        let hot = self.hot();
        loop {
            let mut server = {
                let mut st = self.state.lock();
                let past = hot.shares() && super::shares::past_fast_path(&st, &self.settings());
                if past && self.held_back_now(&st, client) {
                    return None; // the full checkout queues it
                }
                let server = st.pop_idle(hot.round_robin())?;
                // Counted as the client's before the lock is let go: a share decision on
                // another thread meanwhile must see it (vetting may take system calls).
                if past {
                    Self::lend(&server, client, now);
                }
                server
            };
            match self.vet_idle_now(&mut server, now, hot) {
                Vetted::Ready => {
                    Self::lend(&server, client, now);
                    return Some(server);
                }
                Vetted::Discard => continue,
                Vetted::Check(..) => {
                    // The full checkout pops it again and runs the check.
                    server.conn.info.set(ServerUse::Idle);
                    let mut st = self.state.lock();
                    if hot.round_robin() {
                        st.idle.push_front(server);
                    } else {
                        st.idle.push_back(server);
                    }
                    drop(st);
                    self.idle_returned();
                    return None;
                }
            }
        }
    }

    /// Records `client` as the holder of `server` since `now`.
    fn lend(server: &PooledServer, client: &Arc<ClientInfo>, now: Instant) {
        server.conn.info.set(ServerUse::Lent {
            holder: client.clone(),
            since: now,
            tx: TxState::Active,
            tx_since: now,
        });
    }

    fn next_step(self: &Arc<Self>, use_reserve: bool, client: &Arc<ClientInfo>) -> Step {
        let group = self.waiter_group(client);
        let settings = self.settings();
        let mut st = self.state.lock();
        // Fair shares: a group at its cap queues while another group holds or waits for servers.
        let held_back = !group.is_empty() && super::shares::held_back(&st, &settings, &group);
        let round_robin = settings.round_robin;
        drop(settings);
        if !held_back {
            if let Some(server) = st.pop_idle(round_robin) {
                // With shares on, counted as the client's under the lock (see try_checkout_now).
                if group.is_empty() {
                    return Step::Ready(server);
                }
                Self::lend(&server, client, Instant::now());
                return Step::Ready(server);
            }
            if let Some(permit) = self.try_take_slot(&mut st, use_reserve) {
                return Step::Open(permit);
            }
        }
        let group_blocked = self.blocked_by_group(&st);
        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter {
            id,
            since: Instant::now(),
            tx,
            client: client.clone(),
            group,
        });
        Step::Wait(
            WaitGuard {
                pool: self.clone(),
                id,
                rx,
            },
            group_blocked,
        )
    }

    async fn wait(
        self: &Arc<Self>,
        mut guard: WaitGuard,
        group_blocked: bool,
        started: Instant,
        deadline: tokio::time::Instant,
    ) -> Waited {
        // Armed only while the reserve is not yet due; once due, next_step already tries it.
        let reserve_moment = started + self.settings().reserve_pool_timeout;
        let reserve_at = (self.settings().reserve_pool_size > 0 && Instant::now() < reserve_moment)
            .then(|| tokio::time::Instant::from_std(reserve_moment));
        let [db_group, user_group] = &self.groups;
        let _blocked = group_blocked.then(|| (db_group.block(), user_group.block()));
        // Listen for freed units before looking, so a unit freed in between is not missed.
        let db_freed = db_group.freed();
        let user_freed = user_group.freed();
        tokio::pin!(db_freed, user_freed);
        if group_blocked {
            db_freed.as_mut().enable();
            user_freed.as_mut().enable();
            // The database- or user-wide limit is what stops us: close an idle server of a
            // sibling pool if there is one, then try again at once.
            let mut evicted = false;
            for g in &self.groups {
                if g.max() > 0 && g.used() >= g.max() {
                    evicted |= g.evict_idle_elsewhere(self);
                }
            }
            if evicted || self.groups.iter().all(|g| g.max() == 0 || g.used() < g.max()) {
                return self.promote(guard, false);
            }
        }
        // idle_transaction_reclaim_timeout: only a waiting client ever takes a server back, and
        // at most one per wait, so no more are taken than clients wait.
        let mut asked = false;
        // Fair shares: a group held to its cap by one that only released a server lately
        // (shares.rs, SHARE_MEMORY) is let have the idle servers once that memory runs out,
        // without a release to trigger it.
        let shares = self.shares_on();
        loop {
            let reclaim_at = if asked {
                None
            } else {
                self.reclaim_due().map(tokio::time::Instant::from_std)
            };
            let look_again = shares.then(|| tokio::time::Instant::now() + super::shares::SHARE_MEMORY);
            return tokio::select! {
                r = &mut guard.rx => match r {
                    Ok(Grant::Server(server)) => Waited::Server(*server),
                    Ok(Grant::Slot(permit)) => Waited::Slot(permit),
                    Err(_) => Waited::Retry,
                },
                _ = tokio::time::sleep_until(deadline) => Waited::TimedOut,
                _ = sleep_until_opt(reserve_at), if reserve_at.is_some_and(|r| r < deadline) => {
                    self.promote(guard, true)
                }
                _ = &mut db_freed, if group_blocked => self.promote(guard, false),
                _ = &mut user_freed, if group_blocked => self.promote(guard, false),
                _ = sleep_until_opt(reclaim_at), if reclaim_at.is_some_and(|r| r < deadline) => {
                    asked = self.reclaim_one();
                    continue;
                }
                _ = sleep_until_opt(look_again), if look_again.is_some_and(|r| r < deadline) => {
                    self.hand_on_idle();
                    continue;
                }
            };
        }
    }

    /// Tries to turn a queued waiter into a slot holder (reserve allowed or a group freed room).
    fn promote(self: &Arc<Self>, guard: WaitGuard, use_reserve: bool) -> Waited {
        let round_robin = self.settings().round_robin;
        let mut st = self.state.lock();
        if let Some(server) = st.pop_idle(round_robin) {
            drop(st);
            return Waited::Server(server);
        }
        if let Some(permit) = self.try_take_slot(&mut st, use_reserve) {
            if use_reserve {
                tracing::info!(pool = %self.key, "using the reserve pool for a client that waited");
            }
            drop(st);
            drop(guard);
            return Waited::Slot(permit);
        }
        drop(st);
        drop(guard);
        Waited::Retry
    }

    /// Checks an idle server before lending it: socket quiet, not past its lifetime, and the
    /// check query when it has been idle longer than server_check_delay.
    /// Vets an idle server before lending it. The common case (healthy, not due for a check)
    /// takes no await; the check query's wait is boxed, so every checkout does not carry it.
    fn vet_idle(&self, mut server: PooledServer) -> impl Future<Output = Option<PooledServer>> + '_ {
        let vetted = self.vet_idle_now(&mut server, Instant::now(), self.hot());
        // A discarded server is closed now, not when the future is first polled.
        let server = match vetted {
            Vetted::Discard => None,
            Vetted::Ready | Vetted::Check(..) => Some(server),
        };
        async move {
            match (server, vetted) {
                (Some(server), Vetted::Check(query, limit)) => {
                    Box::pin(self.run_check(server, query, limit)).await
                }
                (server, _) => server,
            }
        }
    }

    /// The part of vetting that needs no I/O, as of `now`, under the settings `hot` was read
    /// from (loaded whole only when a check is due).
    fn vet_idle_now(&self, server: &mut PooledServer, now: Instant, hot: super::hot::Hot) -> Vetted {
        if !server.conn.is_healthy_idle() {
            tracing::debug!(
                server = server.conn.id,
                "idle server closed or out of step; discarding"
            );
            self.stats.metrics.recycled(Recycle::Dead, 1);
            return Vetted::Discard;
        }
        if server.expires_at.is_some_and(|t| now >= t) {
            self.stats.metrics.recycled(Recycle::Lifetime, 1);
            return Vetted::Discard;
        }
        if !server.conn.settle_here() {
            tracing::debug!(
                server = server.conn.id,
                "idle server lost moving to this thread; discarding"
            );
            self.stats.metrics.recycled(Recycle::Dead, 1);
            return Vetted::Discard;
        }
        if self.hosts.drained(&server.conn) {
            self.stats.metrics.recycled(Recycle::CheckFailed, 1);
            return Vetted::Discard;
        }
        // Whether a check is due first: it rarely is on a busy pool, and the rest costs more.
        if !hot.check_due(server.conn.last_used, now) {
            return Vetted::Ready;
        }
        let s = self.settings();
        let query = s.server_check_query.trim();
        if query.is_empty() && !s.ha.checks_role() {
            return Vetted::Ready; // the check was turned off just now
        }
        Vetted::Check(query.to_string(), s.connect_timeout)
    }

    /// Runs server_check_query on an idle server; None if it fails.
    async fn run_check(
        &self,
        mut server: PooledServer,
        query: String,
        limit: Duration,
    ) -> Option<PooledServer> {
        if self.settings().ha.checks_role() {
            return self.recheck_role(server, limit).await; // also proves it alive
        }
        if let Err(e) = server.conn.run_internal(&query, limit).await {
            tracing::info!(server = server.conn.id, error = %e, "server failed its check query; discarding");
            self.stats.metrics.recycled(Recycle::CheckFailed, 1);
            return None;
        }
        if server.conn.tx_status != TxStatus::Idle {
            tracing::info!(
                server = server.conn.id,
                "the check query left the server in a transaction; discarding"
            );
            self.stats.metrics.recycled(Recycle::CheckFailed, 1);
            return None;
        }
        server.conn.last_used = Instant::now();
        Some(server)
    }

    /// Opens a server with a slot. While logins fail, the caller gets the cached error at once,
    /// unless the failure is a short outage of a server that worked (within
    /// server_outage_grace): then it waits, until `deadline` at most, while a login is retried
    /// every 50-200 ms, and logs in as soon as one works. `None`: never wait.
    pub(super) async fn open(
        self: &Arc<Self>,
        permit: SlotPermit,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<PooledServer, CheckoutError> {
        let conn = if self.settings().ha.active() {
            Box::pin(self.connect_ha(deadline)).await?
        } else {
            self.connect_single(deadline).await?
        };
        self.opened(conn, permit)
    }

    /// Logs in to the one host, waiting out a short outage (see [`Pool::open`]).
    pub(super) async fn connect_single(
        self: &Arc<Self>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<server::ServerConn, CheckoutError> {
        let conn = loop {
            let attempt = loop {
                let news = self.login.news();
                tokio::pin!(news);
                news.as_mut().enable();
                let (until, cached) = match self.login.gate(self.settings().server_outage_grace) {
                    Gate::Try(attempt) => break attempt,
                    Gate::Fail(cached) => (None, cached),
                    Gate::Wait { until, cached } => (Some(tokio::time::Instant::from_std(until)), cached),
                };
                let wake = match (until, deadline) {
                    (Some(until), Some(deadline)) if tokio::time::Instant::now() < deadline => {
                        until.min(deadline)
                    }
                    _ => {
                        return Err(CheckoutError::Login(cached));
                    }
                };
                tokio::select! {
                    _ = &mut news => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
            };
            let (limit, target, limits) = {
                let s = self.settings();
                let limits = Limits {
                    grace: s.server_outage_grace,
                    cap: s.server_login_retry,
                };
                (s.connect_timeout, s.target.clone(), limits)
            };
            let result = match tokio::time::timeout(limit, server::connect(&target)).await {
                Ok(r) => r,
                Err(_) => Err(ServerError::Timeout(limit)),
            };
            match result {
                Ok(conn) => {
                    attempt.succeeded();
                    break conn;
                }
                Err(e) => {
                    let error = self.login_error(&e);
                    attempt.failed(&error, &e, limits);
                    self.stats.metrics.connect_failures.increment(1);
                    // A short outage of a server that worked: wait it out (the gate decides how long).
                    let waiting = deadline.is_some() && self.login.in_outage_grace(limits.grace);
                    if !waiting {
                        tracing::warn!(pool = %self.key, error = %e, "server login failed");
                        return Err(CheckoutError::Login(error));
                    }
                    tracing::info!(pool = %self.key, error = %e, "server login failed; waiting out the outage (server_outage_grace)");
                }
            }
        };
        Ok(conn)
    }

    /// Registers a freshly opened server with the pool.
    fn opened(&self, conn: server::ServerConn, permit: SlotPermit) -> Result<PooledServer, CheckoutError> {
        self.stats.metrics.connects.increment(1);
        tracing::debug!(pool = %self.key, server = conn.id, pid = conn.backend_pid, "server connection opened");
        self.remember_welcome(&conn);
        conn.info.set_generation(self.generation());
        self.state.lock().servers.insert(conn.id, conn.info.clone());
        let lifetime = self.settings().server_lifetime;
        // Each server gets 75-100% of the lifetime, so a pool never recycles all at once.
        let expires_at = (!lifetime.is_zero())
            .then(|| conn.created + lifetime.mul_f64(0.75 + rand::random::<f64>() * 0.25));
        Ok(PooledServer {
            conn: Box::new(conn),
            expires_at,
            permit,
        })
    }

    /// The error a client sees for a failed login: PostgreSQL's own, or one that names the pool.
    pub(super) fn login_error(&self, e: &ServerError) -> PgError {
        match e {
            ServerError::Postgres(pg) => pg.clone(),
            other => PgError::error(
                crate::protocol::sqlstate::CONNECTION_FAILURE,
                format!("server login failed: {other}"),
            )
            .with_detail(format!(
                "pool {}/{} could not open a connection to {}",
                self.key.database,
                self.key.user,
                self.settings().target.describe()
            )),
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Waited {
    Server(PooledServer),
    Slot(SlotPermit),
    Retry,
    TimedOut,
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
