//! The one way a server goes back: clean servers go straight to the oldest waiter or the idle
//! queue; servers left in a transaction are rolled back, session-mode servers reset, off the
//! client's path; anything uncertain is closed.

use super::{Grant, Pool, PooledServer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a rollback or reset query may take before the server is closed instead.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// What state a client left its server in, decided by the session that used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// At ReadyForQuery `I` with nothing due: reusable as is.
    Clean,
    /// Idle but session state must be reset first (session mode): run the reset query.
    Reset,
    /// Idle inside a transaction (status `T` or `E`), nothing due: roll back, then reset if the
    /// pool is in session mode.
    Rollback,
    /// Responses still due, COPY in progress, or anything else uncertain: close it.
    Close(&'static str),
}

impl Pool {
    /// Returns a server to the pool according to how the client left it.
    pub fn release(self: &Arc<Self>, server: PooledServer, disposition: Disposition) {
        match disposition {
            Disposition::Clean => self.give_back(server),
            Disposition::Close(reason) => {
                tracing::debug!(pool = ?self.key, server = server.conn.id, reason, "closing server");
                drop(server);
            }
            Disposition::Reset if self.settings.reset_query.trim().is_empty() => self.give_back(server),
            Disposition::Reset | Disposition::Rollback => {
                let pool = self.clone();
                tokio::spawn(async move { pool.clean_up(server, disposition).await });
            }
        }
    }

    async fn clean_up(self: Arc<Self>, mut server: PooledServer, disposition: Disposition) {
        let mut queries = Vec::new();
        if disposition == Disposition::Rollback {
            queries.push("ROLLBACK");
        }
        let reset = self.settings.reset_query.trim().to_string();
        if self.settings.mode == crate::config::PoolMode::Session && !reset.is_empty() {
            queries.push(reset.as_str());
        }
        for sql in queries {
            if let Err(e) = server.conn.run_internal(sql, CLEANUP_LIMIT).await {
                tracing::warn!(pool = ?self.key, server = server.conn.id, error = %e, sql, "cleanup failed; closing server");
                return;
            }
        }
        if server.conn.tx_status != b'I' {
            tracing::warn!(pool = ?self.key, server = server.conn.id, "server still in a transaction after cleanup; closing");
            return;
        }
        // Session state is gone after a reset: forget what sluice had applied.
        server.conn.applied.clear();
        self.give_back(server);
    }

    /// Hands a clean server to the oldest waiter, or puts it in the idle queue.
    pub(super) fn give_back(self: &Arc<Self>, mut server: PooledServer) {
        server.conn.last_used = Instant::now();
        let mut st = self.state.lock();
        while let Some(waiter) = st.waiters.pop_front() {
            match waiter.tx.send(Grant::Server(Box::new(server))) {
                Ok(()) => return,
                Err(Grant::Server(back)) => server = *back,
                Err(Grant::Slot(_)) => unreachable!("a server grant came back as a slot"),
            }
        }
        st.idle.push_back(server);
    }
}
