//! SHOW CONFIG and SET: every `[pooler]` setting with its value, default and whether it can be
//! changed live; SET applies a new value through the same parser and validation as the file, and
//! refuses any other key saying why and which keys it can change.

use super::result::{ResultSet, oid, t};
use crate::config::{Config, PoolerConfig};
use crate::shared::Shared;

/// Settings that take effect without a restart (read per use, or pushed to pools by apply).
const CHANGEABLE: &[&str] = &[
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "max_client_conn",
    "max_db_connections",
    "max_user_connections",
    "max_db_client_connections",
    "max_user_client_connections",
    "max_logins_per_address",
    "query_wait_timeout",
    "query_wait_timeout_disconnect",
    "query_wait_notify",
    "query_timeout",
    "idle_transaction_timeout",
    "client_idle_timeout",
    "transaction_timeout",
    "client_login_timeout",
    "server_connect_timeout",
    "server_login_retry",
    "server_outage_grace",
    "server_lifetime",
    "server_idle_timeout",
    "server_check_query",
    "server_check_delay",
    "server_reset_query",
    "server_reset_query_always",
    "application_name_add_host",
    "ignore_startup_parameters",
    "admin_users",
    "stats_users",
    "stats_period",
    "auth_type",
    "auth_query",
    "auth_cache_ttl",
    "max_prepared_statements",
    "log_connections",
    "log_disconnections",
    "log_pooler_errors",
    "log_stats",
    "max_packet_size",
    "leak_idle_in_transaction_threshold",
    "leak_hold_threshold",
    "leak_idle_client_threshold",
    "autodb_idle_timeout",
    "max_client_prepared_statements",
    "max_client_prepared_bytes",
    "notify_queue_size",
    "notify_queue_bytes",
    "max_client_listen_channels",
    "max_pool_listen_channels",
    "pool_share_key",
    "max_pool_share",
    "idle_transaction_reclaim_timeout",
    "server_round_robin",
    "server_fast_close",
    "tcp_keepalive",
    "tcp_keepcnt",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_user_timeout",
    "peer_id",
    "dns_max_ttl",
    "dns_nxdomain_ttl",
    "pin_session_state",
    "session_state_check",
    "upgrade_timeout",
];

/// Settings read once when sluice starts: what is bound or started then.
const AT_START: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "so_reuseport",
    "workers",
    "runtime",
    "pidfile",
    "logfile",
    "log_format",
];

fn as_table(p: &PoolerConfig) -> toml::Table {
    toml::Table::try_from(p).unwrap_or_default()
}

fn render(v: Option<&toml::Value>) -> String {
    match v {
        None => String::new(),
        // Durations in seconds, as PgBouncer prints them (`3600`, `0.5`).
        Some(toml::Value::String(s)) if is_duration_text(s) => match crate::config::parse_duration(s) {
            Ok(d) => format!("{}", d.as_secs_f64()),
            Err(_) => s.clone(),
        },
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|i| render(Some(i)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// SHOW CONFIG: every `[pooler]` key, set or not (an unset one shows an empty value).
pub(super) fn config(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("key", oid::TEXT),
        ("value", oid::TEXT),
        ("default", oid::TEXT),
        ("changeable", oid::TEXT),
    ]);
    let current = as_table(&shared.config.load().pooler);
    let defaults = as_table(&PoolerConfig::default());
    let mut keys = crate::config::pooler_keys().to_vec();
    keys.sort_unstable();
    for key in keys {
        let changeable = if CHANGEABLE.contains(&key) { "yes" } else { "no" };
        rs.push(vec![
            t(key),
            t(render(current.get(key))),
            t(render(defaults.get(key))),
            t(changeable),
        ]);
    }
    rs
}

/// Why SET refused: the reason (the error's DETAIL).
#[derive(Debug)]
pub(super) struct Refused(pub String);

/// The HINT of a refused SET: which keys SET can change.
pub(super) fn changeable_hint() -> String {
    format!("SET can change: {}", CHANGEABLE.join(", "))
}

/// SET key = value: validated like the config file, then applied live.
pub(super) fn set(shared: &Shared, key: &str, value: &str) -> Result<(), Refused> {
    if !CHANGEABLE.contains(&key) {
        return Err(Refused(if AT_START.contains(&key) {
            format!(
                "{key} is read once when sluice starts (the listeners and worker threads are set up then); change it in the configuration file and restart sluice (so_reuseport allows a rolling restart)"
            )
        } else if crate::config::pooler_keys().contains(&key) {
            format!(
                "{key} names files or settings checked together with others (TLS, authentication files); change it in the configuration file and RELOAD"
            )
        } else {
            format!("unknown config parameter: {key}")
        }));
    }
    let current = shared.config.load_full();
    let mut table = as_table(&current.pooler);
    let parsed = value_for(table.get(key), value).map_err(Refused)?;
    table.insert(key.to_string(), parsed);
    let pooler: PoolerConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Refused(format!("invalid value for {key}: {}", e.message())))?;
    let mut next: Config = (*current).clone();
    next.pooler = pooler;
    next.validate()
        .map_err(|e| Refused(format!("invalid value for {key}: {}", e.message)))?;
    shared.apply_config(next).map_err(Refused)?;
    Ok(())
}

/// Interprets the text of a SET value like the current value's type.
fn value_for(current: Option<&toml::Value>, value: &str) -> Result<toml::Value, String> {
    Ok(match current {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| format!("invalid integer: {value}"))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            value
                .trim()
                .parse()
                .map_err(|_| format!("invalid number: {value}"))?,
        ),
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(format!("invalid boolean: {value}")),
            })
        }
        Some(toml::Value::Array(_)) => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(value.to_string()),
    })
}

fn is_duration_text(s: &str) -> bool {
    s == "0" || (s.ends_with('s') && s[..s.len() - 1].trim_end_matches('m').parse::<f64>().is_ok())
}
