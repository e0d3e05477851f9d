//! Reading config text into `Config`, with errors located by file, line, column and key.
//!
//! The pipeline: TOML syntax (via `toml_edit`, which keeps spans), unknown keys anywhere, value
//! types (serde via `toml`), semantic validation, then the auth_file. Every problem is collected
//! (`sluice check` prints them all); a single error is the one earliest in the file.

use super::keys::{self, Problem};
use super::{Config, DatabaseConfig, PoolerConfig, UserConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use toml_edit::{Document, DocumentMut, TableLike};

/// A configuration problem, located precisely enough to fix it.
///
/// Displays as `file:line:column: key: message`. Errors about a key point at the first character
/// of the key's name. `line` and `column` are 0 when there is no position (e.g. the file cannot be
/// read, or the config was not loaded from text), and `key` is empty when the problem is not about
/// one key (e.g. a line of the auth_file); those parts are then left out of the display.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// File (or label) the problem is in.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column, counted in characters (0 when unknown).
    pub column: usize,
    /// Dotted key path at fault, e.g. `databases.app.port` (empty when not about one key).
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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The file's top level, as serde sees it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    pooler: PoolerConfig,
    users: BTreeMap<String, UserConfig>,
    databases: BTreeMap<String, DatabaseConfig>,
    metrics: Option<super::MetricsConfig>,
    peers: BTreeMap<String, super::PeerConfig>,
}

/// Reads and loads a config file; relative auth_file paths resolve against its directory.
pub(super) fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load_file_all(path).map_err(first)
}

/// As [`load_file`], with every problem found (in file order) instead of the first.
pub(super) fn load_file_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            &origin,
            0,
            0,
            "",
            &format!("cannot read the file: {e}"),
        )]
    })?;
    load_str_all(&text, &origin, path.parent())
}

/// Parses, validates and completes (auth_file) config text.
pub(super) fn load_str(text: &str, origin: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
    load_str_all(text, origin, base_dir).map_err(first)
}

/// The problem earliest in the file (unlocated ones first: the file could not be used at all).
fn first(mut errors: Vec<ConfigError>) -> ConfigError {
    errors.sort_by_key(|e| (e.line, e.column));
    errors.swap_remove(0)
}

/// Most wrong-typed values reported in one run (each costs one more deserialization).
const MAX_TYPE_ERRORS: usize = 100;

/// Parses, validates and completes config text, collecting every problem: unknown keys, values
/// of the wrong type (each key at fault is set aside and the rest deserialized again), semantic
/// problems, and the auth_file. Only a TOML syntax error stops at once. Never returns an empty
/// error list.
pub(super) fn load_str_all(
    text: &str,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Config, Vec<ConfigError>> {
    let doc = Document::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = keys::line_col(text, offset);
        let message = e.message().trim().to_string();
        vec![ConfigError::new(
            origin,
            line,
            column,
            &keys::guess_key(text, offset),
            &message,
        )]
    })?;
    let root: &dyn TableLike = doc.as_table();
    let located = Located { text, origin, root };
    let unknown = keys::find_unknown_keys(root, keys::field_names::<RawConfig>());
    let mut errors: Vec<ConfigError> = unknown.iter().map(|p| located.error(p)).collect();
    let mut rest: DocumentMut = text.parse().map_err(|_| errors.clone())?;
    for problem in &unknown {
        remove_path(rest.as_table_mut(), &problem.path);
    }
    let raw = loop {
        let current = rest.to_string();
        let e = match toml::from_str::<RawConfig>(&current) {
            Ok(raw) => break raw,
            Err(e) => e,
        };
        let at_fault = Document::parse(current.as_str()).ok().and_then(|d| {
            let offset = e.span()?.start;
            keys::key_at(d.as_table(), offset).map(|(path, _)| path)
        });
        match at_fault {
            Some(path) if errors.len() < MAX_TYPE_ERRORS && remove_path(rest.as_table_mut(), &path) => {
                let message = plain_words(e.message().trim());
                errors.push(located.error(&Problem { path, message }));
            }
            _ => {
                errors.push(located.serde_error(&e));
                return Err(errors);
            }
        }
    };
    let mut config = Config {
        origin: origin.to_string(),
        pooler: raw.pooler,
        users: raw.users,
        databases: raw.databases,
        auth_file_users: BTreeMap::new(),
        metrics: raw.metrics,
        peers: raw.peers,
    };
    errors.extend(
        super::validate::problems(&config)
            .iter()
            .map(|p| located.error(p)),
    );
    if let Some(base) = base_dir {
        super::validate_security::resolve_paths(&mut config.pooler, base);
    }
    if let Some(auth_file) = &config.pooler.auth_file {
        let path = match base_dir {
            Some(base) if auth_file.is_relative() => base.join(auth_file),
            _ => auth_file.clone(),
        };
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => match super::parse_userlist(&text, &shown) {
                Ok(users) => config.auth_file_users = users,
                Err(e) => errors.push(e),
            },
            Err(e) => {
                let message = format!("cannot read auth_file {shown:?}: {e}");
                errors.push(located.error(&Problem::new(&["pooler", "auth_file"], message)));
            }
        }
    }
    if errors.is_empty() {
        return Ok(config);
    }
    // File order; the auth_file's own problems (another file) after this file's.
    errors.sort_by_key(|e| (e.file != origin, e.line, e.column));
    Err(errors)
}

/// Removes the key at `path` (a table, or a key of a table or inline table); false when absent.
fn remove_path(table: &mut dyn TableLike, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => table
            .get_mut(first)
            .and_then(|item| item.as_table_like_mut())
            .is_some_and(|inner| remove_path(inner, rest)),
    }
}

/// Config text with its parsed document, to give problems a line and column.
struct Located<'a> {
    text: &'a str,
    origin: &'a str,
    root: &'a dyn TableLike,
}

impl Located<'_> {
    /// The error for a problem, at the start of its key (or nearest existing ancestor).
    fn error(&self, problem: &Problem) -> ConfigError {
        let (line, column) = match keys::offset_of(self.root, &problem.path) {
            Some(offset) => keys::line_col(self.text, offset),
            None => (0, 0),
        };
        let key = keys::dotted(&problem.path);
        ConfigError::new(self.origin, line, column, &key, &problem.message)
    }

    /// The error for a serde failure: located at the key whose value failed.
    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = plain_words(e.message().trim());
        let message = message.as_str();
        let Some(offset) = e.span().map(|s| s.start) else {
            return ConfigError::new(self.origin, 0, 0, "", message);
        };
        let (key, at) = match keys::key_at(self.root, offset) {
            Some((path, at)) => (keys::dotted(&path), at),
            None => (String::new(), offset),
        };
        let (line, column) = keys::line_col(self.text, at);
        ConfigError::new(self.origin, line, column, &key, message)
    }
}

/// Rewrites serde's and toml's type jargon (`u16`, `struct PoolerConfig`, ...) in words a config
/// author knows.
fn plain_words(message: &str) -> String {
    // toml's wording when an enum (pool_mode, auth_type) gets a number, bool or array.
    if message == "wanted string or table" {
        return "invalid type: expected a string".to_string();
    }
    const WORDS: [(&str, &str); 10] = [
        ("unknown variant", "unknown value"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected usize", "expected a non-negative integer"),
        ("expected struct PoolerConfig", "expected a table"),
        ("expected struct UserConfig", "expected a table"),
        ("expected struct DatabaseConfig", "expected a table"),
        ("expected struct MetricsConfig", "expected a table"),
        ("expected a map", "expected a table"),
        ("expected a sequence", "expected an array"),
    ];
    WORDS
        .iter()
        .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// Validates an already-built config (no positions are known, so line and column are 0).
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    match super::validate::problems(config).first() {
        Some(p) => Err(ConfigError::new(
            &config.origin,
            0,
            0,
            &keys::dotted(&p.path),
            &p.message,
        )),
        None => Ok(()),
    }
}
