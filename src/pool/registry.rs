//! The set of pools, created on first use of each (database, user).

use super::{Pool, PoolKey, PoolSettings};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// All pools of the process. Looked up once per client login, never per message.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl PoolRegistry {
    /// The pool for `key`, created with `settings()` if it does not exist yet.
    pub fn get_or_create(&self, key: PoolKey, settings: impl FnOnce() -> PoolSettings) -> Arc<Pool> {
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let pool = Pool::new(key.clone(), settings());
        pools.insert(key, pool.clone());
        pool
    }

    /// A snapshot of all pools.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self.pools.lock().values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}
