//! Operator controls on a pool, used by the console: PAUSE (hold new checkouts, wait for
//! servers in use to come back, close them), RESUME, RECONNECT (replace every server as it is
//! released), WAIT_CLOSE (wait for the replaced ones to be gone), and closing idle servers.

use super::{Pool, PooledServer};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often PAUSE and WAIT_CLOSE look again.
const POLL: Duration = Duration::from_millis(20);

impl Pool {
    /// True while PAUSE is in force.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Holds new checkouts, waits until no server is lent out, then closes the idle servers.
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        loop {
            let lent = {
                let st = self.state.lock();
                st.slots_used.saturating_sub(st.idle.len())
            };
            if lent == 0 {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        self.close_idle();
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

    /// The current server generation: older servers are closed on release (RECONNECT), and SHOW
    /// SERVERS marks them close_needed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits until no server from before the last RECONNECT remains.
    pub async fn wait_close(&self) {
        let current = self.generation();
        loop {
            let old = self
                .state
                .lock()
                .servers
                .values()
                .any(|info| info.generation() < current);
            if !old {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
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
                crate::server::ServerUse::Cleaning | crate::server::ServerUse::Login => c.tested += 1,
                crate::server::ServerUse::Idle => {}
            }
        }
        c
    }
}
