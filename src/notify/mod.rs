//! LISTEN/NOTIFY for transaction pooling: one listening server connection per pool (`task.rs`)
//! LISTENs on the union of its clients' channels and hands each notification to every
//! subscribed client's bounded mailbox (`hub.rs`, `mailbox.rs`); `sql.rs` reads LISTEN and
//! UNLISTEN out of a client's SQL. Sessions answer the statements and deliver (session/listen.rs).

mod hub;
mod join;
mod mailbox;
pub(crate) mod sql;
mod subscription;
mod task;

pub(crate) use hub::{Hub, HubFigures, ListenerState};
pub(crate) use join::JOIN_LIMIT;
pub(crate) use subscription::Subscription;

use crate::pool::{Pool, PoolKey};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The bounds in force for a new subscription (from `[pooler]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotifyLimits {
    /// Messages one client may have waiting (notify_queue_size).
    pub(crate) queue_messages: usize,
    /// Bytes one client may have waiting (notify_queue_bytes).
    pub(crate) queue_bytes: usize,
    /// Channels one client may listen on (max_client_listen_channels).
    pub(crate) client_channels: usize,
    /// Channels a pool may listen on (max_pool_listen_channels).
    pub(crate) pool_channels: usize,
}

impl NotifyLimits {
    /// The limits of a `[pooler]` table.
    pub(crate) fn of(p: &crate::config::PoolerConfig) -> NotifyLimits {
        NotifyLimits {
            queue_messages: p.notify_queue_size.max(1) as usize,
            queue_bytes: usize::try_from(p.notify_queue_bytes).unwrap_or(usize::MAX).max(1),
            client_channels: p.max_client_listen_channels.max(1) as usize,
            pool_channels: p.max_pool_listen_channels.max(1) as usize,
        }
    }
}

/// Every pool's hub, made on the first LISTEN of one of its clients. A hub stays while its pool
/// exists (one per pool, so bounded like the pools; its listening connection closes when its
/// last subscriber leaves).
#[derive(Default)]
pub(crate) struct Notifications {
    hubs: Mutex<HashMap<PoolKey, Arc<Hub>>>,
}

impl Notifications {
    /// The hub of `pool`, made (with no connection yet) if it has none.
    pub(crate) fn hub(&self, pool: &Arc<Pool>) -> Arc<Hub> {
        let mut hubs = self.hubs.lock();
        if let Some(h) = hubs.get(&pool.key).filter(|h| h.serves(pool)) {
            return h.clone();
        }
        // Hubs of pools that are gone (an unused auto-database pool was dropped) go with them,
        // so the map stays bounded by the pools that exist.
        hubs.retain(|_, h| h.pool().is_some());
        let hub = Hub::new(pool);
        hubs.insert(pool.key.clone(), hub.clone());
        hub
    }

    /// What every hub is doing, for SHOW LISTENERS and the exporter, sorted by pool.
    pub(crate) fn figures(&self) -> Vec<HubFigures> {
        let hubs: Vec<Arc<Hub>> = self.hubs.lock().values().cloned().collect();
        let mut out: Vec<HubFigures> = hubs.iter().map(|h| h.figures()).collect();
        out.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        out
    }
}
