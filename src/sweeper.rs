//! Ends clients that sent nothing for client_idle_timeout. One task does it for all clients, so
//! an idle session waits only for its socket and its kill switch, and carries no timer of its own.

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
