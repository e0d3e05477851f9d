//! Pools of databases served through the `"*"` entry (auto databases): their number is bounded,
//! and one unused for `autodb_idle_timeout` is freed, with the limit groups only it used. A
//! client naming databases that do not exist must not grow the registry without end.

use super::{Pool, PoolKey, PoolRegistry, PoolSettings};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Most auto-database pools at once. A new one beyond it frees unused ones first; when every
/// one is in use, the login is refused.
pub const MAX_AUTO_POOLS: usize = 1000;

/// What a client is told when every auto-database pool is in use (FATAL 53300).
pub fn too_many_auto_pools(bound: usize) -> crate::protocol::PgError {
    crate::protocol::PgError::fatal(
        crate::protocol::sqlstate::TOO_MANY_CONNECTIONS,
        "no more connections allowed (too many auto-database pools)",
    )
    .with_detail(format!(
        "{bound} pools of databases served through \"*\" are in use"
    ))
}

impl PoolRegistry {
    /// The pool for `key` of an auto database (`is_listed` says which databases the config
    /// names), created if new; `Err(MAX_AUTO_POOLS)` when that many auto pools are all in use.
    pub fn get_or_create_auto(
        &self,
        key: PoolKey,
        limits: (usize, usize),
        is_listed: impl Fn(&str) -> bool,
        settings: impl FnOnce() -> PoolSettings,
    ) -> Result<Arc<Pool>, usize> {
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let auto = |k: &PoolKey| !is_listed(&k.database);
        if auto(&key) && pools.keys().filter(|k| auto(k)).count() >= MAX_AUTO_POOLS {
            let freed = self.free_where(&mut pools, |k, _| auto(k));
            tracing::info!(freed, "auto-database pools at their bound; freed the unused ones");
            if auto(&key) && pools.keys().filter(|k| auto(k)).count() >= MAX_AUTO_POOLS {
                return Err(MAX_AUTO_POOLS);
            }
        }
        Ok(self.create(&mut pools, key, limits.0, limits.1, settings))
    }

    /// Frees auto-database pools unused for `timeout`. `idle_since` is the caller's memory of
    /// when each unused pool was first seen unused (entries of pools in use or gone are
    /// dropped, so it never outgrows the registry). Returns the keys freed.
    pub fn free_idle_auto(
        &self,
        is_listed: impl Fn(&str) -> bool,
        timeout: std::time::Duration,
        idle_since: &mut HashMap<PoolKey, Instant>,
        now: Instant,
    ) -> Vec<PoolKey> {
        let mut pools = self.pools.lock();
        idle_since.retain(|k, _| pools.get(k).is_some_and(unused));
        for (key, pool) in pools.iter() {
            if !is_listed(&key.database) && unused(pool) {
                idle_since.entry(key.clone()).or_insert(now);
            }
        }
        let expired: Vec<PoolKey> = idle_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        let mut freed = Vec::new();
        self.free_where(&mut pools, |k, _| {
            let go = expired.contains(k);
            if go {
                freed.push(k.clone());
            }
            go
        });
        for k in &freed {
            idle_since.remove(k);
        }
        freed
    }

    /// Removes the unused pools `pick` selects, then the limit groups no pool uses any more.
    fn free_where(
        &self,
        pools: &mut HashMap<PoolKey, Arc<Pool>>,
        mut pick: impl FnMut(&PoolKey, &Arc<Pool>) -> bool,
    ) -> usize {
        let before = pools.len();
        pools.retain(|k, p| !(unused(p) && pick(k, p)));
        let freed = before - pools.len();
        if freed > 0 {
            // A group is held by the map and by each member pool.
            for groups in [&self.db_groups, &self.user_groups] {
                groups.lock().retain(|_, g| Arc::strong_count(g) > 1);
            }
        }
        freed
    }
}

/// No client, login, checkout or server holds the pool: only the registry does (the maintenance
/// task holds a weak reference, and every server holds the pool through its slot).
fn unused(pool: &Arc<Pool>) -> bool {
    Arc::strong_count(pool) == 1
}
