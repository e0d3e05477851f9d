//! The set of pools, created on first use of each (database, user), and the limit groups shared
//! by pools of one database (max_db_connections) or one user (max_user_connections).

use super::{InstrumentSource, LimitGroup, Pool, PoolKey, PoolSettings};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// All pools of the process. Looked up once per client login, never per message.
#[derive(Default)]
pub struct PoolRegistry {
    pub(super) pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    pub(super) db_groups: Mutex<HashMap<String, Arc<LimitGroup>>>,
    pub(super) user_groups: Mutex<HashMap<String, Arc<LimitGroup>>>,
    metrics: Option<Arc<dyn InstrumentSource>>,
}

impl PoolRegistry {
    /// An empty registry whose pools record into `metrics` (none: no metrics endpoint).
    pub fn new(metrics: Option<Arc<dyn InstrumentSource>>) -> PoolRegistry {
        PoolRegistry {
            metrics,
            ..Default::default()
        }
    }

    /// The pool for `key`, created (with its maintenance task) from `settings()` if new.
    /// `db_limit`/`user_limit` are max_db_connections/max_user_connections (0: none).
    pub fn get_or_create(
        &self,
        key: PoolKey,
        db_limit: usize,
        user_limit: usize,
        settings: impl FnOnce() -> PoolSettings,
    ) -> Arc<Pool> {
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        self.create(&mut pools, key, db_limit, user_limit, settings)
    }

    /// Creates a pool (with its maintenance task) and records it; the pools lock is held.
    pub(super) fn create(
        &self,
        pools: &mut HashMap<PoolKey, Arc<Pool>>,
        key: PoolKey,
        db_limit: usize,
        user_limit: usize,
        settings: impl FnOnce() -> PoolSettings,
    ) -> Arc<Pool> {
        let db_group = group(&self.db_groups, &key.database, "database", db_limit);
        let user_group = group(&self.user_groups, &key.user, "user", user_limit);
        let metrics = self
            .metrics
            .as_ref()
            .map(|m| m.pool_metrics(&key))
            .unwrap_or_default();
        let pool = Pool::new(key.clone(), settings(), db_group, user_group, metrics);
        pool.start_maintenance();
        pools.insert(key, pool.clone());
        pool
    }

    /// Applies a new configuration to existing pools: settings, and shared limits.
    pub fn apply(&self, config: &crate::Config, tls: &crate::tls::ServerTls) {
        for pool in self.all() {
            let key = &pool.key;
            let Some(db) = config.database(&key.database) else {
                // Removed from the config: the pool drains as its clients leave.
                continue;
            };
            let secret = config.user_secret(&key.user).map(crate::auth::Secret::parse);
            pool.update_settings(super::settings_for(
                config,
                &key.database,
                &key.user,
                secret,
                tls.clone(),
            ));
            let effective = config.effective(db, &key.user);
            pool.groups[0].set_max(effective.database.max_db_connections as usize);
            pool.groups[1].set_max(effective.user.max_user_connections as usize);
        }
    }

    /// A snapshot of all pools.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self.pools.lock().values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

fn group(
    map: &Mutex<HashMap<String, Arc<LimitGroup>>>,
    name: &str,
    kind: &str,
    max: usize,
) -> Arc<LimitGroup> {
    map.lock()
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(LimitGroup::new(format!("{kind} {name}"), max)))
        .clone()
}
