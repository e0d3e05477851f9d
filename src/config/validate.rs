//! Semantic checks on a parsed config: limits, addresses, required companions, non-empty names.

use super::keys::Problem;
use super::userlist::check_secret;
use super::{Config, DatabaseConfig, PoolerConfig};
use std::net::IpAddr;
use std::time::Duration;

/// Smallest accepted `max_packet_size`, in bytes.
pub(super) const MIN_PACKET_SIZE: u32 = 1024;

/// Every problem found, in the order checked: `[pooler]`, then databases, then users.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    check_pooler(&config.pooler, &mut out);
    super::peers::check(config, &mut out);
    if let Some(listen) = config.metrics.as_ref().and_then(|m| m.listen.as_deref())
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        out.push(Problem::new(
            &["metrics", "listen"],
            format!("{listen:?} is not a socket address; expected host:port, e.g. \"127.0.0.1:9127\""),
        ));
    }
    for (name, db) in &config.databases {
        check_database(name, db, &mut out);
    }
    for (name, user) in &config.users {
        if name.is_empty() {
            out.push(Problem::new(&["users", name], "user name must not be empty"));
        }
        if let Some(Err(why)) = user.password.as_deref().map(check_secret) {
            out.push(Problem::new(&["users", name, "password"], why));
        }
        if user.query_wait_timeout == Some(Duration::ZERO) {
            out.push(Problem::new(
                &["users", name, "query_wait_timeout"],
                "must be greater than zero",
            ));
        }
    }
    out
}

/// Checks of the `[pooler]` table.
fn check_pooler(p: &PoolerConfig, out: &mut Vec<Problem>) {
    let mut fail = |key: &str, message: String| out.push(Problem::new(&["pooler", key], message));
    let items: Vec<&str> = p.listen_addr.split(',').map(str::trim).collect();
    if let Some(bad) = items.iter().find(|a| !is_listen_addr(a)) {
        fail(
            "listen_addr",
            format!(
                "invalid address {bad:?} in listen_addr {:?}; expected a comma-separated list of IP addresses, \"*\" (all IPv4 addresses) or \"localhost\"",
                p.listen_addr
            ),
        );
    }
    check_tcp(p, &mut fail);
    super::validate_security::check(p, out);
    super::listen::check(p, out);
    super::shares::check(p, out);
    let mut fail = |key: &str, message: String| out.push(Problem::new(&["pooler", key], message));
    if p.default_pool_size < 1 {
        fail("default_pool_size", "must be at least 1".to_string());
    }
    if p.max_client_conn < 1 {
        fail("max_client_conn", "must be at least 1".to_string());
    }
    if p.max_client_prepared_statements < 1 {
        fail("max_client_prepared_statements", "must be at least 1".to_string());
    }
    if p.max_client_prepared_bytes < 1 {
        fail("max_client_prepared_bytes", "must be at least 1".to_string());
    }
    for (key, value) in [
        ("notify_queue_size", u64::from(p.notify_queue_size)),
        ("notify_queue_bytes", p.notify_queue_bytes),
        (
            "max_client_listen_channels",
            u64::from(p.max_client_listen_channels),
        ),
        ("max_pool_listen_channels", u64::from(p.max_pool_listen_channels)),
    ] {
        if value < 1 {
            fail(key, "must be at least 1".to_string());
        }
    }
    let timeouts = [
        ("server_connect_timeout", p.server_connect_timeout),
        ("client_login_timeout", p.client_login_timeout),
        ("upgrade_timeout", p.upgrade_timeout),
        ("query_wait_timeout", p.query_wait_timeout),
    ];
    for (key, value) in timeouts {
        if value == Duration::ZERO {
            fail(key, "must be greater than zero".to_string());
        }
    }
    if p.max_packet_size < MIN_PACKET_SIZE {
        fail(
            "max_packet_size",
            format!(
                "must be at least {MIN_PACKET_SIZE} bytes, got {}",
                p.max_packet_size
            ),
        );
    }
    let lists = [
        ("admin_users", &p.admin_users),
        ("stats_users", &p.stats_users),
        ("ignore_startup_parameters", &p.ignore_startup_parameters),
    ];
    for (key, list) in lists {
        if let Some(i) = list.iter().position(|s| s.trim().is_empty()) {
            fail(key, format!("entry {} is empty; names must not be empty", i + 1));
        }
    }
}

/// Checks of one `[databases.NAME]` table.
fn check_database(name: &str, db: &DatabaseConfig, out: &mut Vec<Problem>) {
    let mut fail = |key: Option<&str>, message: &str| {
        let path: Vec<&str> = ["databases", name].into_iter().chain(key).collect();
        out.push(Problem::new(&path, message));
    };
    if name.is_empty() {
        fail(None, "database name must not be empty");
    }
    if db.host.trim().is_empty() {
        fail(Some("host"), "must not be empty");
    }
    if db.port.all().contains(&0) {
        fail(Some("port"), "must not be 0");
    } else if !db.host.trim().is_empty()
        && let Err(why) = crate::config::parse_host_list(&db.host, &db.port)
    {
        fail(Some("host"), &why);
    }
    if db.dbname.as_deref().is_some_and(|s| s.is_empty()) {
        fail(Some("dbname"), "must not be empty");
    }
    if db.user.as_deref().is_some_and(|s| s.is_empty()) {
        fail(Some("user"), "must not be empty");
    }
    if db.password.is_some() && db.user.is_none() {
        fail(
            Some("password"),
            "password is set without user; the forced password belongs to the forced user, so set user too",
        );
    }
    if let Some(Err(why)) = db.password.as_deref().map(check_secret) {
        fail(Some("password"), &why);
    }
    if db.pool_size == Some(0) {
        fail(Some("pool_size"), "must be at least 1");
    }
    if db.query_wait_timeout == Some(Duration::ZERO) {
        fail(Some("query_wait_timeout"), "must be greater than zero");
    }
    let texts = [
        ("connect_query", &db.connect_query),
        ("client_encoding", &db.client_encoding),
        ("datestyle", &db.datestyle),
        ("timezone", &db.timezone),
        ("application_name", &db.application_name),
    ];
    for (key, value) in texts {
        if value
            .as_deref()
            .is_some_and(|v| v.trim().is_empty() || v.contains('\0'))
        {
            fail(
                Some(key),
                "must not be empty or contain a NUL byte; leave it out instead",
            );
        }
    }
}

/// Linux's largest TCP_KEEPCNT.
const MAX_KEEPCNT: u32 = 127;

/// Linux's largest TCP_KEEPIDLE and TCP_KEEPINTVL, in seconds.
const MAX_KEEP_SECS: u64 = 32767;

/// The TCP keepalive keys: within what the kernel accepts, in whole seconds.
fn check_tcp(p: &PoolerConfig, fail: &mut impl FnMut(&str, String)) {
    if p.tcp_keepcnt > MAX_KEEPCNT {
        fail(
            "tcp_keepcnt",
            format!("must be at most {MAX_KEEPCNT}, got {}", p.tcp_keepcnt),
        );
    }
    for (key, value) in [
        ("tcp_keepidle", p.tcp_keepidle),
        ("tcp_keepintvl", p.tcp_keepintvl),
    ] {
        if value.subsec_nanos() != 0 || value.as_secs() > MAX_KEEP_SECS {
            fail(
                key,
                format!("must be whole seconds from 0 (the OS default) to {MAX_KEEP_SECS}s"),
            );
        }
    }
    if p.tcp_user_timeout.as_millis() > u128::from(u32::MAX) {
        fail("tcp_user_timeout", format!("must be at most {}ms", u32::MAX));
    }
}

/// Whether `addr` is an accepted `listen_addr` item: an IP address, `*` or `localhost`.
fn is_listen_addr(addr: &str) -> bool {
    addr == "*" || addr == "localhost" || addr.parse::<IpAddr>().is_ok()
}
