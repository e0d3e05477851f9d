//! The settings in force for one database, one user, or one (database, user) pool: where a
//! `[databases.NAME]` or `[users.NAME]` value overrides the global `[pooler]` one. The only place
//! that precedence is written; pools, logins, limits, the console and the open-files estimate
//! all read it from here.
//!
//! Precedence (PgBouncer's): `pool_mode` is the user's, then the database's, then the global
//! one; `pool_size`, `min_pool_size`, `reserve_pool_size`, `max_db_connections` and
//! `max_db_client_connections` are the database's, then the global ones (`default_pool_size`
//! for `pool_size`); `max_user_connections` and `max_user_client_connections` are the user's,
//! then the global ones; `query_wait_timeout` and `pin_session_state` are the user's, then the
//! database's, then the global one (as `pool_mode`). Every other setting is global.

use super::{Config, DatabaseConfig, PinSessionState, PoolMode};

/// What a database's own table decides, each value resolved against `[pooler]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// Server connections per pool: the database's `pool_size`, else `default_pool_size`.
    pub pool_size: u32,
    /// Servers each pool keeps open: `min_pool_size`, the database's or the global one.
    pub min_pool_size: u32,
    /// Extra servers per pool for clients that waited: `reserve_pool_size`.
    pub reserve_pool_size: u32,
    /// Server connections over all the database's pools (0: no limit).
    pub max_db_connections: u32,
    /// Client connections to the database (0: no limit).
    pub max_db_client_connections: u32,
    /// The database's own `pool_mode`, when it sets one (SHOW DATABASES shows only this).
    pub own_pool_mode: Option<PoolMode>,
}

/// What a user's own table decides, each value resolved against `[pooler]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSettings {
    /// Server connections over all the user's pools (0: no limit).
    pub max_user_connections: u32,
    /// Client connections of the user (0: no limit).
    pub max_user_client_connections: u32,
    /// The user's own `pool_mode`, when it sets one (SHOW USERS shows only this).
    pub own_pool_mode: Option<PoolMode>,
}

/// The settings of the pool for one (database, user): both halves, and the pool mode that
/// results from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveSettings {
    /// The database's half.
    pub database: DatabaseSettings,
    /// The user's half.
    pub user: UserSettings,
    /// Session or transaction pooling: the user's, else the database's, else the global mode.
    pub pool_mode: PoolMode,
    /// Longest a client of the pool waits for a server: the user's, else the database's, else
    /// the global query_wait_timeout.
    pub query_wait_timeout: std::time::Duration,
    /// pin_session_state: the user's, else the database's, else the global value.
    pub pin_session_state: PinSessionState,
}

impl Config {
    /// The settings in force for `db`'s pools (whatever the user).
    pub fn database_settings(&self, db: &DatabaseConfig) -> DatabaseSettings {
        let p = &self.pooler;
        DatabaseSettings {
            pool_size: db.pool_size.unwrap_or(p.default_pool_size),
            min_pool_size: db.min_pool_size.unwrap_or(p.min_pool_size),
            reserve_pool_size: db.reserve_pool_size.unwrap_or(p.reserve_pool_size),
            max_db_connections: db.max_db_connections.unwrap_or(p.max_db_connections),
            max_db_client_connections: db
                .max_db_client_connections
                .unwrap_or(p.max_db_client_connections),
            own_pool_mode: db.pool_mode,
        }
    }

    /// The settings in force for `user` (whatever the database); a user without a
    /// `[users.NAME]` table gets the global values.
    pub fn user_settings(&self, user: &str) -> UserSettings {
        let p = &self.pooler;
        let own = self.users.get(user);
        UserSettings {
            max_user_connections: own
                .and_then(|u| u.max_user_connections)
                .unwrap_or(p.max_user_connections),
            max_user_client_connections: own
                .and_then(|u| u.max_user_client_connections)
                .unwrap_or(p.max_user_client_connections),
            own_pool_mode: own.and_then(|u| u.pool_mode),
        }
    }

    /// The settings in force for `user`'s pool of `db`.
    pub fn effective(&self, db: &DatabaseConfig, user_name: &str) -> EffectiveSettings {
        let database = self.database_settings(db);
        let query_wait_timeout = self
            .users
            .get(user_name)
            .and_then(|u| u.query_wait_timeout)
            .or(db.query_wait_timeout)
            .unwrap_or(self.pooler.query_wait_timeout);
        let user = self.user_settings(user_name);
        EffectiveSettings {
            query_wait_timeout,
            pool_mode: user
                .own_pool_mode
                .or(database.own_pool_mode)
                .unwrap_or(self.pooler.pool_mode),
            pin_session_state: self
                .users
                .get(user_name)
                .and_then(|u| u.pin_session_state)
                .or(db.pin_session_state)
                .unwrap_or(self.pooler.pin_session_state),
            database,
            user,
        }
    }

    /// Server connections per (database, user) pool for `db`: its `pool_size` when set,
    /// otherwise `pooler.default_pool_size`.
    pub fn pool_size_for(&self, db: &DatabaseConfig) -> u32 {
        self.database_settings(db).pool_size
    }

    /// Pool mode for `user`'s pool of `db`. Precedence: the user's `pool_mode` (`[users.NAME]`),
    /// then the database's, then the global `pooler.pool_mode`.
    pub fn pool_mode_for(&self, db: &DatabaseConfig, user: &str) -> PoolMode {
        self.effective(db, user).pool_mode
    }
}
