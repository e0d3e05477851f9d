//! The figures behind SHOW POOLS, SHOW DATABASES and SHOW LISTS, computed once from the live
//! state and shared by the console and the Prometheus endpoint, so both always agree.

use crate::clients::{ClientInfo, ClientPhase};
use crate::config::Config;
use crate::pool::Pool;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// One row of SHOW POOLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PoolFigures {
    /// Clients of the pool not waiting (cl_active).
    pub cl_active: usize,
    /// Clients waiting for a server (cl_waiting).
    pub cl_waiting: usize,
    /// Servers lent to clients (sv_active).
    pub sv_active: usize,
    /// Idle servers used recently (sv_idle).
    pub sv_idle: usize,
    /// Idle servers due for a check (sv_used).
    pub sv_used: usize,
    /// Servers being checked or cleaned (sv_tested).
    pub sv_tested: usize,
    /// Servers logging in (sv_login).
    pub sv_login: usize,
    /// How long the oldest waiter has waited (maxwait, maxwait_us).
    pub max_wait: Duration,
}

fn clients_of<'a>(clients: &'a [Arc<ClientInfo>], pool: &Pool) -> impl Iterator<Item = &'a Arc<ClientInfo>> {
    let (db, user) = (pool.key.database.clone(), pool.key.user.clone());
    clients
        .iter()
        .filter(move |c| **c.database() == *db && **c.user() == *user)
}

/// SHOW POOLS' figures for every pool of `pools` (in the console's order), with its clients
/// among `clients` (every logged-in client).
pub(crate) fn pool_figures(
    clients: &[Arc<ClientInfo>],
    pools: Vec<Arc<Pool>>,
) -> Vec<(Arc<Pool>, PoolFigures)> {
    pools
        .into_iter()
        .map(|pool| {
            let sv = pool.server_counts();
            let waiting = clients_of(clients, &pool)
                .filter(|c| c.live().phase == ClientPhase::Waiting)
                .count();
            let active = clients_of(clients, &pool).count() - waiting;
            let f = PoolFigures {
                cl_active: active,
                cl_waiting: waiting,
                sv_active: sv.active,
                sv_idle: sv.idle,
                sv_used: sv.used,
                sv_tested: sv.tested,
                sv_login: sv.login,
                max_wait: pool.max_wait(),
            };
            (pool, f)
        })
        .collect()
}

/// One row of SHOW DATABASES.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DatabaseFigures {
    /// Database name clients use.
    pub name: String,
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database name on the server.
    pub dbname: String,
    /// The forced server user, if any.
    pub force_user: Option<String>,
    /// pool_size.
    pub pool_size: usize,
    /// min_pool_size.
    pub min_pool_size: usize,
    /// reserve_pool_size.
    pub reserve_pool_size: usize,
    /// The database's own pool mode, if set.
    pub pool_mode: Option<&'static str>,
    /// max_db_connections (0: none).
    pub max_connections: usize,
    /// Servers open for the database.
    pub current_connections: usize,
    /// max_db_client_connections (0: none).
    pub max_client_connections: usize,
    /// Clients connected to the database.
    pub current_client_connections: usize,
    /// Every pool of the database is paused.
    pub paused: bool,
    /// DISABLE is in force.
    pub disabled: bool,
}

/// SHOW VERSION's text (also `pgbouncer_version_info{version}`).
pub(crate) fn version_text() -> String {
    format!("sluice {} (PgBouncer 1.25 compatible)", env!("CARGO_PKG_VERSION"))
}

/// The name PgBouncer shows for a pool mode.
pub(crate) fn mode_name(mode: crate::config::PoolMode) -> &'static str {
    match mode {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    }
}

/// SHOW DATABASES' figures for every database of `config`, from every pool and every logged-in
/// client; `disabled` says whether DISABLE is in force for a database.
pub(crate) fn database_figures(
    config: &Config,
    pools: &[Arc<Pool>],
    clients: &[Arc<ClientInfo>],
    disabled: impl Fn(&str) -> bool,
) -> Vec<DatabaseFigures> {
    let mut out = Vec::new();
    for (name, db) in &config.databases {
        let settings = config.database_settings(db);
        let mine: Vec<&Arc<Pool>> = pools.iter().filter(|x| &x.key.database == name).collect();
        out.push(DatabaseFigures {
            name: name.clone(),
            host: db.host.clone(),
            port: db.port.first(),
            dbname: db.dbname.clone().unwrap_or_else(|| name.clone()),
            force_user: db.user.clone(),
            pool_size: settings.pool_size as usize,
            min_pool_size: settings.min_pool_size as usize,
            reserve_pool_size: settings.reserve_pool_size as usize,
            pool_mode: settings.own_pool_mode.map(mode_name),
            max_connections: settings.max_db_connections as usize,
            current_connections: mine.iter().map(|x| x.open_servers()).sum(),
            max_client_connections: settings.max_db_client_connections as usize,
            current_client_connections: clients.iter().filter(|c| **c.database() == **name).count(),
            paused: !mine.is_empty() && mine.iter().all(|x| x.is_paused()),
            disabled: disabled(name),
        });
    }
    out
}

/// SHOW LISTS' rows: (list, items), from every pool, the logged-in clients and the logins in
/// progress.
pub(crate) fn list_figures(
    config: &Config,
    pools: &[Arc<Pool>],
    used_clients: usize,
    login_clients: usize,
) -> Vec<(&'static str, usize)> {
    let servers: usize = pools.iter().map(|p| p.open_servers()).sum();
    let mut users: BTreeSet<&str> = config.users.keys().map(|k| k.as_str()).collect();
    users.extend(config.auth_file_users.keys().map(|k| k.as_str()));
    vec![
        ("databases", config.databases.len()),
        ("users", users.len()),
        ("peers", config.peers.len()),
        ("pools", pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", login_clients),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", crate::server::resolve::cached_names().len()),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ]
}
