//! Reading config text into `Config`, with errors located by file, line, column and key.

use super::{Config, DatabaseConfig, PoolerConfig, UserConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A configuration problem, located precisely enough to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    /// File (or label) the problem is in.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path at fault (empty when not about one key).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// Builds an error at a location.
    pub fn new(file: &str, line: usize, column: usize, key: &str, message: &str) -> Self {
        ConfigError {
            file: file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    pooler: PoolerConfig,
    users: BTreeMap<String, UserConfig>,
    databases: BTreeMap<String, DatabaseConfig>,
}

pub(super) fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(&origin, 0, 0, "", &e.to_string()))?;
    load_str(&text, &origin, path.parent())
}

pub(super) fn load_str(text: &str, origin: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::new(origin, 1, 1, "", e.message()))?;
    let mut auth_file_users = BTreeMap::new();
    if let Some(af) = &raw.pooler.auth_file {
        let p = match base_dir {
            Some(b) if af.is_relative() => b.join(af),
            _ => af.clone(),
        };
        let o = p.display().to_string();
        let t = std::fs::read_to_string(&p).map_err(|e| ConfigError::new(&o, 0, 0, "", &e.to_string()))?;
        auth_file_users = super::parse_userlist(&t, &o)?;
    }
    Ok(Config {
        origin: origin.to_string(),
        pooler: raw.pooler,
        users: raw.users,
        databases: raw.databases,
        auth_file_users,
    })
}
