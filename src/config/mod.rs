//! Typed pooler configuration: TOML with PgBouncer's key names, defaults, and validation errors that
//! name the file, line, column and key at fault.

mod duration;
mod effective;
mod hosts;
mod keys;
mod listen;
mod load;
mod peers;
mod pooler;
mod shares;
mod tls_names;
mod userlist;
mod validate;
mod validate_security;

pub use duration::{format_duration, parse_duration};
pub use effective::{DatabaseSettings, EffectiveSettings, UserSettings};
pub use hosts::{HostAddr, LoadBalanceHosts, Ports, TargetSessionAttrs, parse_host_list};
pub(crate) use listen::group_id;
pub use load::ConfigError;
pub use peers::{MAX_PEER_ID, PeerConfig};
pub use pooler::{LogFormat, PoolerConfig, RuntimeKind};
pub use shares::ShareKey;
pub(crate) use tls_names::{cipher_provider, protocol_versions};
pub use userlist::parse_userlist;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole configuration as loaded from one file (plus the auth_file it names).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the configuration came from (a path, or a label for configs built from strings).
    pub origin: String,
    /// Global settings, the `[pooler]` table.
    pub pooler: PoolerConfig,
    /// `[users.NAME]` tables: per-user passwords and limits.
    pub users: BTreeMap<String, UserConfig>,
    /// `[databases.NAME]` tables; the key `"*"` is the fallback for databases not listed.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Entries of `pooler.auth_file` (PgBouncer userlist.txt format): user name -> secret
    /// (plaintext, `md5...` or `SCRAM-SHA-256$...`). Empty when no auth_file is set.
    pub auth_file_users: BTreeMap<String, String>,
    /// The `[metrics]` table: the Prometheus endpoint (off when absent).
    pub metrics: Option<MetricsConfig>,
    /// `[peers.ID]` tables: the other sluice instances cancel requests are forwarded to, by
    /// their `peer_id` (as a decimal string, the TOML key).
    pub peers: BTreeMap<String, PeerConfig>,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address (`host:port`) of the HTTP endpoint serving `/metrics` and `/health`; the
    /// endpoint is off when unset. Read at start only (RELOAD does not move it).
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The endpoint's address, when one is set and parses.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref()?.parse().ok()
    }
}

/// How long a client keeps the server it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// The server is held from login until the client disconnects.
    Session,
    /// The server is held for one transaction and returned at ReadyForQuery `I`.
    #[default]
    Transaction,
}

/// What a transaction-mode client's session state that cannot move to another server (a temp
/// table, a session advisory lock, a `WITH HOLD` cursor, an SQL `PREPARE`) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PinSessionState {
    /// The client keeps its server until the state is gone or it leaves; then the server is
    /// cleaned (DISCARD ALL) before anyone else gets it.
    #[default]
    Pin,
    /// The statement that would create such state fails (SQLSTATE 0A000).
    Error,
    /// Not looked for (PgBouncer's behaviour: the state stays on the server for whoever is next).
    Off,
}

/// When a transaction-mode client's server is asked, after a transaction, which settings and
/// pinning state it carries (one query, `session_state_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionStateCheck {
    /// After a transaction whose statements or text show a sign of it (SET, RESET, DISCARD,
    /// DO, CALL, set_config, advisory, TEMP, ...): free for the others.
    #[default]
    WhenSeen,
    /// After every transaction: also catches what a function called from a plain query did
    /// (a SET or set_config in its body, a lock it took), at one query per transaction.
    Always,
}

impl PinSessionState {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            PinSessionState::Pin => "pin",
            PinSessionState::Error => "error",
            PinSessionState::Off => "off",
        }
    }
}

/// How clients prove who they are to sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
pub enum AuthType {
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
    /// MD5 challenge, or SCRAM when the stored secret is a SCRAM verifier (as PgBouncer does).
    #[serde(rename = "md5")]
    Md5,
    /// SCRAM-SHA-256 only.
    #[serde(rename = "scram-sha-256")]
    #[default]
    ScramSha256,
    /// Cleartext password (only sensible over TLS).
    #[serde(rename = "plain")]
    Plain,
    /// The TLS client certificate's CN is the user name; no password.
    #[serde(rename = "cert")]
    Cert,
    /// Per-connection method from `auth_hba_file`.
    #[serde(rename = "hba")]
    Hba,
}

/// PgBouncer's default `auth_query`: the user's secret unless it has expired, for login roles only.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// TLS policy of one leg (`client_tls_sslmode`, `server_tls_sslmode`), as libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    #[default]
    Disable,
    /// TLS only when the other side insists (clients: accepted when asked; servers: plaintext).
    Allow,
    /// TLS when the other side supports it.
    Prefer,
    /// TLS always; no certificate check.
    Require,
    /// TLS, and the peer's certificate must chain to the CA file.
    VerifyCa,
    /// As verify-ca, and the server's name must match its certificate (servers only; for clients
    /// it is verify-ca).
    VerifyFull,
}

/// The value as written in the config (`verify-full`), for messages.
impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A `[users.NAME]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    /// Plaintext password, `md5<hex>` or a `SCRAM-SHA-256$...` verifier.
    pub password: Option<String>,
    /// Overrides the pool mode for this user's pools.
    pub pool_mode: Option<PoolMode>,
    /// Overrides pin_session_state for this user's pools.
    pub pin_session_state: Option<PinSessionState>,
    /// Most server connections for this user over all pools (overrides max_user_connections).
    pub max_user_connections: Option<u32>,
    /// Most client connections for this user (overrides max_user_client_connections).
    pub max_user_client_connections: Option<u32>,
    /// Longest this user's clients wait for a server (overrides the database's and the global
    /// query_wait_timeout).
    #[serde(default, with = "duration::option")]
    pub query_wait_timeout: Option<Duration>,
}

/// A `[databases.NAME]` table: where the real database is and how to pool it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Host name, IP address, or a directory holding PostgreSQL's unix socket (starts with `/`);
    /// or a comma-separated list of them (items may be `host:port`), tried as libpq does.
    pub host: String,
    /// PostgreSQL's port: one number, or a string of one port per host (`"5432,5433"`).
    pub port: Ports,
    /// Which servers of the host list qualify (libpq's values; checked at login).
    pub target_session_attrs: TargetSessionAttrs,
    /// How new servers are spread over the qualifying hosts.
    pub load_balance_hosts: LoadBalanceHosts,
    /// Database name on the server; defaults to the name clients use.
    pub dbname: Option<String>,
    /// Forced server login user: every client of this database uses it on the server side.
    pub user: Option<String>,
    /// Password for the forced `user`.
    pub password: Option<String>,
    /// Pool size for this database's pools; `default_pool_size` when absent.
    pub pool_size: Option<u32>,
    /// Pool mode for this database; the global `pool_mode` when absent.
    pub pool_mode: Option<PoolMode>,
    /// pin_session_state for this database's pools; the global one when absent.
    pub pin_session_state: Option<PinSessionState>,
    /// Servers kept open for each of this database's pools (overrides min_pool_size).
    pub min_pool_size: Option<u32>,
    /// Reserve servers per pool (overrides reserve_pool_size).
    pub reserve_pool_size: Option<u32>,
    /// Most server connections to this database over all pools (overrides max_db_connections).
    pub max_db_connections: Option<u32>,
    /// Most client connections to this database (overrides max_db_client_connections).
    pub max_db_client_connections: Option<u32>,
    /// SQL run once on every new server connection right after login, before any client gets
    /// it (e.g. `SET search_path = app`); a failure fails the login.
    pub connect_query: Option<String>,
    /// Longest this database's clients wait for a server (overrides the global
    /// query_wait_timeout; a user's own value overrides this).
    #[serde(default, with = "duration::option")]
    pub query_wait_timeout: Option<Duration>,
    /// `client_encoding` asked of the server at login.
    pub client_encoding: Option<String>,
    /// `DateStyle` asked of the server at login.
    pub datestyle: Option<String>,
    /// `TimeZone` asked of the server at login.
    pub timezone: Option<String>,
    /// `application_name` asked of the server at login (a client's own value is set over it).
    pub application_name: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            host: "127.0.0.1".to_string(),
            port: Ports::one(5432),
            target_session_attrs: TargetSessionAttrs::Any,
            load_balance_hosts: LoadBalanceHosts::Disable,
            dbname: None,
            user: None,
            password: None,
            pool_size: None,
            pool_mode: None,
            pin_session_state: None,
            min_pool_size: None,
            reserve_pool_size: None,
            max_db_connections: None,
            max_db_client_connections: None,
            connect_query: None,
            query_wait_timeout: None,
            client_encoding: None,
            datestyle: None,
            timezone: None,
            application_name: None,
        }
    }
}

/// Every `[pooler]` key, in declaration order (SHOW CONFIG lists them all, set or not).
pub fn pooler_keys() -> &'static [&'static str] {
    keys::field_names::<PoolerConfig>()
}

/// The keys of each table sluice reads (`pooler`, `databases.NAME`, `users.NAME`, `metrics`),
/// in declaration order: what docs/configuration.md must document (`tests/docs.rs`).
pub fn documented_tables() -> [(&'static str, &'static [&'static str]); 5] {
    [
        ("pooler", pooler_keys()),
        ("databases.NAME", keys::field_names::<DatabaseConfig>()),
        ("users.NAME", keys::field_names::<UserConfig>()),
        ("peers.ID", keys::field_names::<PeerConfig>()),
        ("metrics", keys::field_names::<MetricsConfig>()),
    ]
}

impl DatabaseConfig {
    /// The hosts this entry lists, each with its port (empty if the list is invalid, which
    /// loading refuses).
    pub fn host_list(&self) -> Vec<HostAddr> {
        parse_host_list(&self.host, &self.port).unwrap_or_default()
    }
}

impl Config {
    /// Reads, parses and validates a config file, and the auth_file it names.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        load::load_file(path)
    }

    /// As [`Config::load`], with every problem in the file (in file order), not only the first:
    /// what `sluice check` reports.
    pub fn load_all_problems(path: &std::path::Path) -> Result<Config, Vec<ConfigError>> {
        load::load_file_all(path)
    }

    /// Parses and validates config text; `origin` names it in errors; relative auth_file paths are
    /// resolved against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        base_dir: Option<&std::path::Path>,
    ) -> Result<Config, ConfigError> {
        load::load_str(text, origin, base_dir)
    }

    /// Checks the semantic rules (pool sizes, addresses, timeouts, names, ...) that loading
    /// enforces, for a config built in code; returns the first problem. Configs from
    /// [`Config::load`] and [`Config::from_toml_str`] are already validated, with positions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        load::validate(self)
    }

    /// The database entry for a client-facing database name: its own table or the `"*"` fallback.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.get(name).or_else(|| self.databases.get("*"))
    }

    /// The secret (plaintext, md5 or SCRAM verifier) sluice knows for a user, from `[users]` first
    /// and then the auth_file.
    pub fn user_secret(&self, user: &str) -> Option<&str> {
        self.users
            .get(user)
            .and_then(|u| u.password.as_deref())
            .or_else(|| self.auth_file_users.get(user).map(String::as_str))
    }
}
