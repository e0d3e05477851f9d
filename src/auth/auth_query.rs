//! auth_query's cache: the secrets of users sluice's config does not list, as `auth_query` found
//! them on PostgreSQL (`server::auth_query` runs it), kept for `auth_cache_ttl` so a burst of
//! logins costs one lookup. A user the query does not find (or whose secret is NULL, e.g.
//! expired) gets no secret, which authentication answers exactly like a wrong password.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most users remembered; the cache is emptied when it would grow past this.
const MAX_CACHED: usize = 10_000;

/// Secrets found with auth_query, each kept for `auth_cache_ttl`.
#[derive(Default)]
pub struct AuthQueryCache {
    map: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl AuthQueryCache {
    /// The cached answer for `user` if younger than `ttl` (`Some(None)`: known not to exist).
    pub fn get(&self, user: &str, ttl: Duration) -> Option<Option<String>> {
        let map = self.map.lock();
        map.get(user)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, secret)| secret.clone())
    }

    /// Remembers an answer.
    pub fn put(&self, user: &str, secret: Option<String>) {
        let mut map = self.map.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(user.to_string(), (Instant::now(), secret));
    }
}
