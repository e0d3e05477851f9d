//! SHOW CONFIG and SET: every `[pooler]` setting with its value, default and whether it can be
//! changed live; SET applies a new value through the same parser and validation as the file.

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

/// SHOW CONFIG.
pub fn config(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("key", oid::TEXT),
        ("value", oid::TEXT),
        ("default", oid::TEXT),
        ("changeable", oid::TEXT),
    ]);
    let current = as_table(&shared.config.load().pooler);
    let defaults = as_table(&PoolerConfig::default());
    let mut keys: Vec<&String> = defaults.keys().collect();
    keys.sort();
    for key in keys {
        let changeable = if CHANGEABLE.contains(&key.as_str()) {
            "yes"
        } else {
            "no"
        };
        rs.push(vec![
            t(key.clone()),
            t(render(current.get(key))),
            t(render(defaults.get(key))),
            t(changeable),
        ]);
    }
    rs
}

/// SET key = value: validated like the config file, then applied live. Errors are the text the
/// client gets.
pub fn set(shared: &Shared, key: &str, value: &str) -> Result<(), String> {
    if !CHANGEABLE.contains(&key) {
        let known = as_table(&PoolerConfig::default()).contains_key(key);
        return Err(if known {
            format!("config variable '{key}' cannot be changed while running")
        } else {
            format!("unknown config parameter: {key}")
        });
    }
    let current = shared.config.load_full();
    let mut table = as_table(&current.pooler);
    let parsed = value_for(table.get(key), value)?;
    table.insert(key.to_string(), parsed);
    let pooler: PoolerConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("invalid value for {key}: {}", e.message()))?;
    let mut next: Config = (*current).clone();
    next.pooler = pooler;
    next.validate()
        .map_err(|e| format!("invalid value for {key}: {}", e.message))?;
    shared.apply_config(next);
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
