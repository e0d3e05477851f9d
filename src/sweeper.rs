//! Ends clients that sent nothing for client_idle_timeout. One task does it for all clients, so
//! an idle session waits only for its socket and its kill switch, and carries no timer of its own.
//! A second task frees the pools of auto databases (`"*"`) unused for autodb_idle_timeout.

use crate::shared::Shared;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often idle clients are checked: the timeout is enforced to within this.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Checks idle clients against client_idle_timeout (read from the live config) until the
/// pooler is gone.
pub fn spawn_idle_sweeper(shared: &Arc<Shared>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(shared) = weak.upgrade() else { return };
            let limit = shared.config.load().pooler.client_idle_timeout;
            if limit.is_zero() {
                continue;
            }
            let now = Instant::now();
            shared.for_each_client(|c| c.kill_if_idle_for(limit, now));
        }
    });
}

/// Longest pause between two looks for unused auto-database pools.
const AUTODB_SWEEP_MAX: Duration = Duration::from_secs(1);

/// Frees pools of databases served through `"*"` once unused for autodb_idle_timeout (read from
/// the live config), until the pooler is gone.
pub fn spawn_autodb_sweeper(shared: &Arc<Shared>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut idle_since = std::collections::HashMap::new();
        loop {
            let timeout = match weak.upgrade() {
                Some(shared) => shared.config.load().pooler.autodb_idle_timeout,
                None => return,
            };
            let pause = (timeout / 4).clamp(Duration::from_millis(50), AUTODB_SWEEP_MAX);
            tokio::time::sleep(pause).await;
            let Some(shared) = weak.upgrade() else { return };
            let config = shared.config.load_full();
            let listed = |name: &str| config.databases.contains_key(name);
            let freed = shared
                .pools
                .free_idle_auto(listed, timeout, &mut idle_since, Instant::now());
            for key in freed {
                tracing::info!(
                    database = %key.database,
                    user = %key.user,
                    "auto-database pool unused for autodb_idle_timeout; freed"
                );
            }
        }
    });
}
