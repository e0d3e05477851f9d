//! The one timer task of a pool: closes servers idle past server_idle_timeout or past their
//! lifetime, and keeps min_pool_size servers open (while logins are not failing). Holds only a
//! weak reference, so it ends when the pool is gone.

use super::Recycle;
use super::{Pool, PooledServer};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the maintenance task runs.
const TICK: Duration = Duration::from_millis(500);

pub(super) fn spawn(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = Weak::upgrade(&weak) else { return };
            pool.close_stale_idle();
            pool.probe_while_unreachable().await;
            pool.fill_to_minimum().await;
        }
    });
}

impl Pool {
    /// Closes idle servers past their lifetime, and those idle past server_idle_timeout while
    /// more than min_pool_size servers are open.
    fn close_stale_idle(&self) {
        let now = Instant::now();
        let idle_timeout = self.settings().server_idle_timeout;
        let stale: Vec<PooledServer> = {
            let mut st = self.state.lock();
            let mut open = st.slots_used;
            let mut keep = std::collections::VecDeque::with_capacity(st.idle.len());
            let mut stale = Vec::new();
            let (mut lifetime, mut idle) = (0, 0);
            // Oldest-used first: those are the ones to let go.
            while let Some(server) = st.idle.pop_front() {
                let expired = server.expires_at.is_some_and(|t| now >= t);
                let idle_too_long = !idle_timeout.is_zero()
                    && now.duration_since(server.conn.last_used) >= idle_timeout
                    && open > self.settings().min_pool_size;
                if expired || idle_too_long {
                    if expired {
                        lifetime += 1;
                    } else {
                        idle += 1;
                    }
                    open -= 1;
                    stale.push(server);
                } else {
                    keep.push_back(server);
                }
            }
            st.idle = keep;
            self.stats.metrics.recycled(Recycle::Lifetime, lifetime);
            self.stats.metrics.recycled(Recycle::IdleTimeout, idle);
            stale
        };
        if !stale.is_empty() {
            tracing::debug!(pool = %self.key, closed = stale.len(), "closing idle servers (lifetime or idle timeout)");
        }
        drop(stale);
    }

    /// While logins back off because the server was unreachable or starting up, knock on its
    /// port each tick; once it answers, the next checkout may try a login at once. (A refused
    /// login — a wrong password — keeps its back-off.)
    async fn probe_while_unreachable(&self) {
        if !self.login.transient_backoff() {
            return;
        }
        let target = self.settings().target.clone();
        let probe = tokio::time::timeout(TICK, crate::server::open_socket(&target.host, target.port)).await;
        if matches!(probe, Ok(Ok(_))) {
            tracing::debug!(pool = %self.key, "server port answers again; retrying logins");
            self.login.retry_now();
        }
    }

    /// Opens servers until min_pool_size are open, one at a time, while logins work.
    async fn fill_to_minimum(self: &Arc<Self>) {
        while self.login.may_try() {
            let permit = {
                let mut st = self.state.lock();
                if st.slots_used >= self.settings().min_pool_size || !st.waiters.is_empty() {
                    return;
                }
                match self.try_take_slot(&mut st, false) {
                    Some(p) => p,
                    None => return,
                }
            };
            match self.open(permit, None).await {
                Ok(server) => self.give_back(server, Instant::now()),
                Err(_) => return,
            }
        }
    }
}
