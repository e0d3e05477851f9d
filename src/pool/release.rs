//! The one way a server goes back: clean servers go straight to the oldest waiter or the idle
//! queue (unless past their lifetime); servers left in a transaction are rolled back, servers
//! whose role may have changed get their login identity back, and servers are reset where the
//! pool mode asks for it, all off the client's path; anything uncertain, or any cleanup that
//! fails, closes the server. A server with a cancel request on its way waits for it first.

use super::Recycle;
use super::{Grant, Pool, PooledServer};
use crate::config::PoolMode;
use crate::protocol::TxStatus;
use crate::server::{Identity, ServerUse};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a rollback or reset query may take before the server is closed instead.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// Longest a released server waits for a cancel request on its way to it before it is closed.
const CANCEL_WAIT: Duration = crate::server::cancel::FORWARD_LIMIT.saturating_add(Duration::from_secs(1));

/// What state a client left its server in, decided by the session that used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// At ReadyForQuery `I` with nothing due: reusable as is (reset first if the pool says so).
    Clean,
    /// Idle inside a transaction (status `T` or `E`), nothing due: roll back first.
    Rollback,
    /// Responses still due, COPY in progress, or anything else uncertain: close it.
    Close(&'static str),
    /// It carries session state its client could not take along (a temp table, an advisory
    /// lock, a held cursor, an SQL-prepared statement): rolled back when `rollback`, then
    /// `DISCARD ALL` (which drops all of it and releases session advisory locks) before anyone
    /// else gets it; closed if that fails.
    Discard {
        /// Idle inside a transaction: roll back first.
        rollback: bool,
    },
}

impl Pool {
    /// Returns a server to the pool according to how the client left it. A server with a cancel
    /// request on its way is lent to nobody until PostgreSQL has taken the request (it would
    /// cancel the next client's query), off the client's path.
    pub fn release(self: &Arc<Self>, server: PooledServer, disposition: Disposition) {
        self.release_at(server, disposition, Instant::now());
    }

    /// [`Pool::release`] with the caller's clock reading for the moment the server came back
    /// (a session releases at its last ReadyForQuery and has read the clock for it already).
    pub fn release_at(self: &Arc<Self>, server: PooledServer, disposition: Disposition, now: Instant) {
        // The reset rule and fair shares, without loading the settings.
        let hot = self.hot();
        let (reset, shares) = (hot.reset(), hot.shares());
        // Fair shares remember the group that releases (shares.rs, SHARE_MEMORY): noted under
        // give_back's lock on the common path, separately on the others.
        let holder = Self::releasing_holder(&server, shares);
        let cancel_in_flight = server.conn.info.cancel_in_flight();
        let fast = matches!(disposition, Disposition::Clean)
            && !reset
            && server.conn.identity == Identity::Login
            && !cancel_in_flight;
        if !fast && let Some(holder) = &holder {
            self.note_release(holder, now);
        }
        if cancel_in_flight && !matches!(disposition, Disposition::Close(_)) {
            server.conn.info.set(ServerUse::Cleaning {
                rolling_back_for: None,
            });
            let pool = self.clone();
            tokio::spawn(async move {
                if server.conn.info.cancels_arrived(CANCEL_WAIT).await {
                    pool.release(server, disposition);
                } else {
                    tracing::warn!(pool = %pool.key, server = server.conn.id, "a cancel request for the server did not arrive; closing it");
                }
            });
            return;
        }
        match disposition {
            Disposition::Close(reason) => {
                tracing::debug!(pool = %self.key, server = server.conn.id, reason = %reason, "closing server");
                drop(server);
            }
            Disposition::Clean if fast => self.give_back_from(server, now, holder.as_deref()),
            Disposition::Clean | Disposition::Rollback | Disposition::Discard { .. } => {
                let rollback = matches!(
                    disposition,
                    Disposition::Rollback | Disposition::Discard { rollback: true }
                );
                server.conn.info.set(ServerUse::Cleaning {
                    rolling_back_for: holder.filter(|_| rollback),
                });
                let pool = self.clone();
                tokio::spawn(async move { pool.clean_up(server, disposition).await });
            }
        }
    }

    fn needs_reset(&self) -> bool {
        Self::needs_reset_in(&self.settings())
    }

    pub(super) fn needs_reset_in(s: &super::PoolSettings) -> bool {
        (s.mode == PoolMode::Session || s.reset_query_always) && !s.reset_query.trim().is_empty()
    }

    async fn clean_up(self: Arc<Self>, mut server: PooledServer, disposition: Disposition) {
        // A rollback or reset can change settings behind any client's back.
        server.conn.params_fingerprint = None;
        let (rollback, discard) = match disposition {
            Disposition::Rollback => (true, false),
            Disposition::Discard { rollback } => (rollback, true),
            Disposition::Clean | Disposition::Close(_) => (false, false),
        };
        let reset = if discard {
            Some("DISCARD ALL".to_string())
        } else {
            self.needs_reset()
                .then(|| self.settings().reset_query.trim().to_string())
        };
        let mut queries: Vec<&str> = Vec::new();
        if rollback {
            queries.push("ROLLBACK");
        }
        let identity = server.conn.identity;
        if identity == Identity::MaybeChanged {
            // Back to the user the server logged in as, before anyone else gets it (and without
            // a LISTEN a transaction-mode client ran unseen, see session/listen.rs).
            queries.push("RESET SESSION AUTHORIZATION; RESET ROLE; UNLISTEN *");
        }
        if let Some(r) = &reset {
            queries.push(r);
        }
        // The reset (DISCARD ALL) also undoes what the database's connect_query set up: run it
        // again, so every session starts as the operator configured it.
        let connect_query = reset
            .as_ref()
            .and_then(|_| self.settings().target.startup.connect_query.clone());
        if let Some(q) = &connect_query {
            queries.push(q);
        }
        for sql in queries {
            if let Err(e) = server.conn.run_internal(sql, CLEANUP_LIMIT).await {
                tracing::warn!(pool = %self.key, server = server.conn.id, error = %e, sql = %sql, "cleanup failed; closing server");
                return;
            }
        }
        if server.conn.tx_status != TxStatus::Idle {
            tracing::warn!(pool = %self.key, server = server.conn.id, "server still in a transaction after cleanup; closing");
            return;
        }
        if identity == Identity::MaybeChanged {
            if !self.identity_is_login(&server) {
                tracing::warn!(pool = %self.key, server = server.conn.id, "server still not its login user after the reset; closing");
                return;
            }
            server.conn.identity = Identity::Login;
        }
        if reset.is_some() {
            // The reset query wiped session state: nothing sluice applied is left on the server.
            // (A plain ROLLBACK keeps settings made outside the transaction, so they stay known.)
            server.conn.applied.clear();
        }
        if discard {
            // DISCARD ALL also dropped the statements sluice had prepared on it.
            server.conn.statements.clear();
            server.conn.info.set_prepared(0);
        }
        self.give_back(server, Instant::now());
    }

    /// True when the server reports the session authorization and superuser status its pool's
    /// servers log in with.
    fn identity_is_login(&self, server: &PooledServer) -> bool {
        let Some(login) = self.welcome_params() else {
            return false;
        };
        ["session_authorization", "is_superuser"]
            .iter()
            .all(|k| server.conn.params.get(*k) == login.get(*k))
    }

    /// Hands a clean server to the oldest waiter, or puts it in the idle queue; a server past its
    /// lifetime is closed instead (its slot then goes to a waiter, who opens a fresh one).
    /// `now`: when it came back (one clock reading for the lifetime check and its idle time).
    pub(super) fn give_back(self: &Arc<Self>, server: PooledServer, now: Instant) {
        self.give_back_from(server, now, None)
    }

    /// [`Pool::give_back`] of a server `holder` (Some only while fair shares are on) released
    /// just now: its group is noted as present (shares.rs, `SHARE_MEMORY`) under the same lock.
    fn give_back_from(
        self: &Arc<Self>,
        mut server: PooledServer,
        now: Instant,
        holder: Option<&crate::clients::ClientInfo>,
    ) {
        // A server closed here was still released by its holder's group.
        let note_closed = |pool: &Self| {
            if let Some(holder) = holder {
                pool.note_release(holder, now);
            }
        };
        if self.retire_for_host(&server) {
            self.stats.metrics.recycled(Recycle::CheckFailed, 1);
            note_closed(self);
            return;
        }
        if server.expires_at.is_some_and(|t| now >= t) {
            tracing::debug!(pool = %self.key, server = server.conn.id, "server_lifetime reached; closing");
            self.stats.metrics.recycled(Recycle::Lifetime, 1);
            drop(server);
            note_closed(self);
            return;
        }
        if server.conn.info.generation() < self.generation() || self.is_paused() {
            // RECONNECT asked for fresh servers, or PAUSE is closing them as they come back.
            if server.conn.info.generation() < self.generation() {
                self.stats.metrics.recycled(Recycle::Reconnect, 1);
            }
            drop(server);
            note_closed(self);
            return;
        }
        server.conn.last_used = now;
        server.conn.info.set(ServerUse::Idle);
        let mut st = self.state.lock();
        if let Some(holder) = holder {
            // Before the waiters are looked at: the releasing group counts as present.
            st.recent.note(&self.settings().shares, holder, now);
        }
        let mut marked = false;
        while let Some(waiter) = self.take_waiter(&mut st) {
            if self.shares_on() {
                // Counted as its new holder's at once, so the next share decision sees it.
                Self::mark_granted(&server, &waiter);
                marked = true;
            }
            match waiter.tx.send(Grant::Server(Box::new(server))) {
                Ok(()) => return,
                Err(Grant::Server(back)) => server = *back,
                Err(Grant::Slot(_)) => unreachable!("a server grant came back as a slot"),
            }
        }
        if self.groups.iter().any(|g| g.contended()) {
            // A sibling pool is waiting for room under a shared limit: an idle server here
            // would keep it waiting, so close this one and free the unit.
            drop(st);
            tracing::debug!(pool = %self.key, "closing a released server to make room in a shared limit");
            drop(server);
            return;
        }
        if marked {
            server.conn.info.set(ServerUse::Idle); // every waiter offered it had gone
        }
        st.idle.push_back(server);
        drop(st);
        self.idle_returned();
    }
}
