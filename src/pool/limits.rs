//! Limits shared by several pools: max_db_connections (all pools of one database) and
//! max_user_connections (all pools of one user). A pool takes a unit from each of its groups when
//! it opens a slot and gives it back when the slot is freed; a full group can make room by closing
//! an idle server of another pool in the group.

use super::{Pool, PooledServer};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// A server-connection budget shared by pools.
#[derive(Debug)]
pub struct LimitGroup {
    /// Name for messages (`database app`, `user alice`).
    pub name: String,
    max: AtomicUsize,
    used: AtomicUsize,
    members: Mutex<Vec<Weak<Pool>>>,
    freed: Notify,
    /// Clients of member pools waiting because this group is full.
    blocked: AtomicUsize,
}

/// Counts a waiter as blocked by a group for as long as it lives.
pub(super) struct BlockedWaiter<'a>(&'a LimitGroup);

impl Drop for BlockedWaiter<'_> {
    fn drop(&mut self) {
        self.0.blocked.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LimitGroup {
    /// A group allowing `max` servers (0: unlimited).
    pub fn new(name: String, max: usize) -> LimitGroup {
        LimitGroup {
            name,
            max: AtomicUsize::new(max),
            used: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
            freed: Notify::new(),
            blocked: AtomicUsize::new(0),
        }
    }

    /// The limit (0: unlimited).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Changes the limit (RELOAD, SET).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Servers counted against the group now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn join(&self, pool: &Arc<Pool>) {
        let mut members = self.members.lock();
        members.retain(|w| w.strong_count() > 0);
        members.push(Arc::downgrade(pool));
    }

    /// Takes one unit if the group has room.
    pub(super) fn try_acquire(&self) -> bool {
        let max = self.max();
        if max == 0 {
            self.used.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < max).then_some(u + 1)
            })
            .is_ok()
    }

    /// Gives a unit back and wakes pools waiting for room.
    pub(super) fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
        self.freed.notify_waiters();
    }

    /// Registers a waiter blocked by this group (until the guard drops).
    pub(super) fn block(&self) -> BlockedWaiter<'_> {
        self.blocked.fetch_add(1, Ordering::AcqRel);
        BlockedWaiter(self)
    }

    /// True when some member pool has clients waiting for room in this group.
    pub(super) fn contended(&self) -> bool {
        self.max() > 0 && self.blocked.load(Ordering::Acquire) > 0
    }

    /// Resolves when some member frees a unit (enable it before checking, to miss nothing).
    pub(super) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Closes one idle server of another member pool to make room; true if one was closed.
    pub(super) fn evict_idle_elsewhere(&self, asking: &Pool) -> bool {
        let members: Vec<Arc<Pool>> = self.members.lock().iter().filter_map(Weak::upgrade).collect();
        for pool in members {
            if std::ptr::eq(Arc::as_ptr(&pool), asking) {
                continue;
            }
            let victim: Option<PooledServer> = pool.state.lock().idle.pop_front();
            if let Some(server) = victim {
                tracing::debug!(group = %self.name, pool = %pool.key, "closing an idle server to make room");
                drop(server);
                return true;
            }
        }
        false
    }
}
