//! Operator controls on a pool, used by the console: PAUSE (hold new checkouts, wait for
//! servers in use to come back, close them), RESUME, RECONNECT (replace every server as it is
//! released), WAIT_CLOSE (wait for the replaced ones to be gone), and closing idle servers.

use super::{Pool, PooledServer};
use std::sync::atomic::Ordering;

impl Pool {
    /// True while PAUSE is in force.
    #[inline]
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Holds new checkouts, waits until no server is lent out, then closes the idle servers.
    /// Cancel-safe: dropping the future (the console client hung up) leaves the pool paused,
    /// as PAUSE's first step did, and nothing else behind.
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.wait_for_servers(|st| st.slots_used <= st.idle.len()).await;
        self.close_idle();
    }

    /// Resolves once `done` holds for the pool's state, looking again each time a server comes
    /// back to the idle queue, closes or frees its slot ([`Pool::servers_changed`]). Listens
    /// before it looks, so a change between the look and the wait is not missed.
    async fn wait_for_servers(&self, done: impl Fn(&super::PoolState) -> bool) {
        loop {
            let changed = self.servers_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let finished = done(&self.state.lock());
            if finished {
                return;
            }
            changed.await;
        }
    }

    /// Wakes PAUSE and WAIT_CLOSE to look again: a server closed or freed its slot.
    pub(super) fn servers_changed(&self) {
        self.servers_changed.notify_waiters();
    }

    /// A server went (back) into the idle queue: wakes a PAUSE waiting for it. Called after the
    /// state lock is released; a PAUSE that began before that lock was taken is told here, one
    /// that began after it sees the server idle. Costs one atomic load when nothing is paused.
    #[inline]
    pub(super) fn idle_returned(&self) {
        if self.paused.load(Ordering::SeqCst) {
            self.servers_changed();
        }
    }

    /// Holds new checkouts without waiting for servers in use (SUSPEND, KILL).
    pub fn pause_quietly(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Lets held checkouts proceed.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    /// Resolves when the pool is not paused (listening first, so a RESUME is not missed).
    pub(super) async fn wait_resumed(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }

    /// Marks every current server for replacement: idle ones close now, lent ones when released.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let closed: Vec<PooledServer> = self.state.lock().idle.drain(..).collect();
        self.stats
            .metrics
            .recycled(super::Recycle::Reconnect, closed.len() as u64);
        drop(closed);
    }

    /// server_fast_close: ends the session-mode clients that hold an outdated server (from
    /// before the last RECONNECT or connection-settings RELOAD) between two transactions, so the
    /// server closes now instead of when the session ends. A client inside a transaction is
    /// asked again once it is out of it (the janitor calls this every sweep).
    pub(crate) fn fast_close_outdated(&self) {
        if self.settings().mode != crate::config::PoolMode::Session {
            return;
        }
        let current = self.generation();
        for info in self.server_infos() {
            if info.generation() >= current {
                continue;
            }
            if let crate::server::ServerUse::Lent {
                holder,
                tx: crate::server::TxState::Idle,
                ..
            } = info.current()
            {
                holder.kill_with(crate::clients::Kill::FastClose);
            }
        }
    }

    /// The current server generation: older servers are closed on release (RECONNECT), and SHOW
    /// SERVERS marks them close_needed.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits until no server from before the last RECONNECT remains.
    pub async fn wait_close(&self) {
        let current = self.generation();
        self.wait_for_servers(|st| st.servers.values().all(|info| info.generation() >= current))
            .await;
    }

    /// Number of servers open (idle, lent, or being opened or cleaned).
    pub fn open_servers(&self) -> usize {
        self.state.lock().slots_used
    }

    /// Closes all idle servers (shutdown, PAUSE, RECONNECT, KILL).
    pub fn close_idle(&self) {
        let idle: Vec<PooledServer> = self.state.lock().idle.drain(..).collect();
        drop(idle);
    }
}

/// What a pool's servers are doing, in SHOW POOLS' terms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerCounts {
    /// Lent to a client.
    pub active: usize,
    /// Idle and used recently (no check needed).
    pub idle: usize,
    /// Idle longer than server_check_delay (checked before use).
    pub used: usize,
    /// Being checked, rolled back or reset.
    pub tested: usize,
    /// Being opened and logged in.
    pub login: usize,
}

impl Pool {
    /// Counts the pool's servers by state.
    pub fn server_counts(&self) -> ServerCounts {
        let check_delay = self.settings().server_check_delay;
        let st = self.state.lock();
        let mut c = ServerCounts {
            login: st.slots_used.saturating_sub(st.servers.len()),
            ..Default::default()
        };
        for s in &st.idle {
            if s.conn.last_used.elapsed() >= check_delay {
                c.used += 1;
            } else {
                c.idle += 1;
            }
        }
        for info in st.servers.values() {
            match info.current() {
                crate::server::ServerUse::Lent { .. } => c.active += 1,
                crate::server::ServerUse::Cleaning { .. } | crate::server::ServerUse::Login => c.tested += 1,
                crate::server::ServerUse::Idle => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LimitGroup, Pool, PoolKey};
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Waker};
    use std::time::Duration;

    /// A pool with no server yet (nothing here connects anywhere).
    fn pool() -> Arc<Pool> {
        let config =
            crate::Config::from_toml_str("[databases.app]\n", "test.toml", None).expect("a valid config");
        let settings = super::super::settings_for(&config, "app", "u", None, Default::default());
        let key = PoolKey {
            database: "app".into(),
            user: "u".into(),
        };
        let group = |name: &str| Arc::new(LimitGroup::new(name.into(), 0));
        Pool::new(
            key,
            settings,
            group("database app"),
            group("user u"),
            Default::default(),
        )
    }

    /// PAUSE that has looked and found a server lent must hear that server's slot come back:
    /// nothing else happens in a paused pool, so a lost wakeup would leave it waiting forever.
    #[tokio::test]
    async fn pause_hears_the_last_lent_slot_come_back() {
        let pool = pool();
        let lent = {
            let mut st = pool.state.lock();
            pool.try_take_slot(&mut st, false).expect("a free slot")
        };
        let mut pause = Box::pin(pool.pause());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            pause.as_mut().poll(&mut cx).is_pending(),
            "PAUSE returned with a server lent"
        );
        assert!(pool.is_paused());
        drop(lent);
        tokio::time::timeout(Duration::from_secs(5), pause)
            .await
            .expect("PAUSE returned once the slot came back");
        assert_eq!(pool.open_servers(), 0);
    }

    /// A change signalled between PAUSE's (or WAIT_CLOSE's) look at the pool and its wait is
    /// not missed: the waiter listens before it looks. The change here is signalled from inside
    /// the first look, the latest moment a release can slip in.
    #[tokio::test]
    async fn a_change_right_after_the_look_is_not_missed() {
        let pool = pool();
        let looks = std::sync::atomic::AtomicUsize::new(0);
        let wait = pool.wait_for_servers(|_| {
            if looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                pool.servers_changed();
                false
            } else {
                true
            }
        });
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the wait heard the change made after its first look");
        assert_eq!(looks.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
