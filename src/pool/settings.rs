//! Deriving a pool's settings from the configuration (at creation, RELOAD and SET).

use super::PoolSettings;
use crate::auth::Secret;
use crate::config::Config;
use crate::server::ServerTarget;

/// The settings of the pool for (`database`, `user`) under `config`; `client_secret` is the
/// client's own secret, used to log in to the server unless the database forces a user.
pub fn settings_for(
    config: &Config,
    database: &str,
    user: &str,
    client_secret: Option<Secret>,
    tls: crate::tls::ServerTls,
) -> PoolSettings {
    let db = config.database(database).cloned().unwrap_or_default();
    let (server_user, secret) = match &db.user {
        Some(forced) => (forced.clone(), db.password.as_deref().map(Secret::parse)),
        None => (user.to_string(), client_secret),
    };
    let mode = config
        .users
        .get(user)
        .and_then(|u| u.pool_mode)
        .or(db.pool_mode)
        .unwrap_or(config.pooler.pool_mode);
    let p = &config.pooler;
    PoolSettings {
        pool_size: config.pool_size_for(&db).max(1) as usize,
        min_pool_size: db.min_pool_size.unwrap_or(p.min_pool_size) as usize,
        reserve_pool_size: db.reserve_pool_size.unwrap_or(p.reserve_pool_size) as usize,
        reserve_pool_timeout: p.reserve_pool_timeout,
        reset_query_always: p.server_reset_query_always,
        server_lifetime: p.server_lifetime,
        server_idle_timeout: p.server_idle_timeout,
        server_check_query: p.server_check_query.clone(),
        server_check_delay: p.server_check_delay,
        server_login_retry: p.server_login_retry,
        server_outage_grace: p.server_outage_grace,
        mode,
        target: ServerTarget {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone().unwrap_or_else(|| database.to_string()),
            user: server_user,
            secret,
            tls,
        },
        connect_timeout: config.pooler.server_connect_timeout,
        max_prepared_statements: if mode == crate::config::PoolMode::Transaction {
            p.max_prepared_statements as usize
        } else {
            0
        },
        reset_query: config.pooler.server_reset_query.clone(),
    }
}
