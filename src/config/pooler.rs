//! The `[pooler]` table: every global key under PgBouncer's name, with its default, and the
//! start-only choices it carries (`runtime`, `log_format`).

use super::{
    AuthType, DEFAULT_AUTH_QUERY, PinSessionState, PoolMode, SessionStateCheck, ShareKey, SslMode, duration,
    listen,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The `[pooler]` table: PgBouncer's `[pgbouncer]` section under the same key names.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolerConfig {
    /// Addresses the TCP listeners bind: a comma-separated list of IP addresses, `*` (all IPv4
    /// addresses) and `localhost` (127.0.0.1), e.g. `"*, ::"` for every IPv4 and IPv6 address.
    pub listen_addr: String,
    /// TCP port (and unix socket name `.s.PGSQL.<port>`).
    pub listen_port: u16,
    /// Directory for the unix socket (`/tmp`, as PgBouncer); an empty string turns it off.
    pub unix_socket_dir: Option<PathBuf>,
    /// Default pool mode for databases that do not set their own.
    pub pool_mode: PoolMode,
    /// Transaction mode: what session state that cannot move does (pin, error, off); a
    /// database's or user's own value overrides it.
    pub pin_session_state: PinSessionState,
    /// Transaction mode: after which transactions a client's server is asked what settings and
    /// pinning state it carries; `always` catches what functions do, at one query per transaction.
    pub session_state_check: SessionStateCheck,
    /// Server connections per (database, user) pool unless the database sets pool_size.
    pub default_pool_size: u32,
    /// Most client connections accepted at once, logins in progress included (a logged-in
    /// console session may use the console's small reserve beyond it).
    pub max_client_conn: u32,
    /// Client authentication method.
    pub auth_type: AuthType,
    /// PgBouncer userlist.txt with `"user" "secret"` lines, relative to the config file.
    pub auth_file: Option<PathBuf>,
    /// pg_hba.conf-style rules used when `auth_type = "hba"`, relative to the config file.
    pub auth_hba_file: Option<PathBuf>,
    /// User whose connection looks up unknown users' secrets with `auth_query`.
    pub auth_user: Option<String>,
    /// Query returning (name, secret) for the user `$1`; PgBouncer's default honours rolvaliduntil.
    pub auth_query: String,
    /// Database the `auth_query` runs in; the client's database when unset.
    pub auth_dbname: Option<String>,
    /// How long a secret found with `auth_query` is reused before it is looked up again.
    #[serde(with = "duration")]
    pub auth_cache_ttl: Duration,
    /// TLS towards clients: disable, allow, prefer, require, verify-ca or verify-full.
    pub client_tls_sslmode: SslMode,
    /// Private key (PEM) of the certificate sluice shows clients.
    pub client_tls_key_file: Option<PathBuf>,
    /// Certificate chain (PEM) sluice shows clients.
    pub client_tls_cert_file: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to under verify-ca/verify-full.
    pub client_tls_ca_file: Option<PathBuf>,
    /// TLS versions offered to clients: `secure`, `all`, `tlsv1.2`, `tlsv1.3` (comma list).
    pub client_tls_protocols: String,
    /// Cipher suites offered to clients: `default` or a colon list of rustls suite names.
    pub client_tls_ciphers: String,
    /// TLS towards PostgreSQL: disable, allow, prefer, require, verify-ca or verify-full.
    pub server_tls_sslmode: SslMode,
    /// CA (PEM) the server's certificate must chain to under verify-ca/verify-full.
    pub server_tls_ca_file: Option<PathBuf>,
    /// Private key (PEM) of the client certificate sluice shows PostgreSQL.
    pub server_tls_key_file: Option<PathBuf>,
    /// Client certificate (PEM) sluice shows PostgreSQL.
    pub server_tls_cert_file: Option<PathBuf>,
    /// TLS versions offered to PostgreSQL (same values as `client_tls_protocols`).
    pub server_tls_protocols: String,
    /// Cipher suites offered to PostgreSQL (same values as `client_tls_ciphers`).
    pub server_tls_ciphers: String,
    /// Users allowed to run admin commands on the console.
    pub admin_users: Vec<String>,
    /// Users allowed read-only SHOW commands on the console.
    pub stats_users: Vec<String>,
    /// Startup parameters accepted from clients and ignored (beyond the ones always tolerated).
    pub ignore_startup_parameters: Vec<String>,
    /// Time allowed to open a TCP connection and log in to PostgreSQL.
    #[serde(with = "duration")]
    pub server_connect_timeout: Duration,
    /// Time a client has to finish logging in to sluice.
    #[serde(with = "duration")]
    pub client_login_timeout: Duration,
    /// How long an upgrade (SIGUSR2, docs/upgrades.md) waits for clients in a transaction, or
    /// on TLS, to become idle or leave before they are disconnected with an error.
    #[serde(with = "duration")]
    pub upgrade_timeout: Duration,
    /// Longest a client waits for a server before it gets an error.
    #[serde(with = "duration")]
    pub query_wait_timeout: Duration,
    /// SQL run on a server released in session mode before another client gets it.
    pub server_reset_query: String,
    /// Largest protocol message sluice will buffer whole (bytes); bigger ones are refused.
    pub max_packet_size: u32,
    /// Tokio worker threads; 0 means one per core.
    pub workers: usize,
    /// How client sessions are spread over the worker threads (`per-core` or `shared`).
    pub runtime: RuntimeKind,
    /// Named prepared statements each server keeps for clients in transaction mode (LRU);
    /// 0 turns the tracking off and statements pass through untouched.
    pub max_prepared_statements: u32,
    /// Most named prepared statements one client may hold in transaction mode; a Parse past it
    /// gets ERROR 53400 (a bound on the memory one client can make sluice keep).
    pub max_client_prepared_statements: u32,
    /// Most bytes (names and Parse bodies) of the named prepared statements one client may hold
    /// in transaction mode; a Parse past it gets ERROR 53400.
    pub max_client_prepared_bytes: u64,
    /// Notifications (and notices) one LISTENing client may have waiting in transaction mode; a
    /// client that lets more pile up is disconnected (docs/listen-notify.md).
    pub notify_queue_size: u32,
    /// Bytes of notifications one LISTENing client may have waiting in transaction mode.
    pub notify_queue_bytes: u64,
    /// Channels one client may LISTEN on in transaction mode (ERROR 53400 past it).
    pub max_client_listen_channels: u32,
    /// Channels all clients of one pool may LISTEN on together (ERROR 53400 past it).
    pub max_pool_listen_channels: u32,
    /// Servers each pool keeps open even when idle (0: none).
    pub min_pool_size: u32,
    /// Extra servers a pool may open for clients that waited `reserve_pool_timeout` (0: none).
    pub reserve_pool_size: u32,
    /// How long a client waits before the reserve pool may be used for it.
    #[serde(with = "duration")]
    pub reserve_pool_timeout: Duration,
    /// Most server connections per database over all its pools (0: no limit).
    pub max_db_connections: u32,
    /// Most server connections per user over all its pools (0: no limit).
    pub max_user_connections: u32,
    /// Most client connections per database (0: no limit).
    pub max_db_client_connections: u32,
    /// Most client connections per user (0: no limit).
    pub max_user_client_connections: u32,
    /// Most logins in progress at once from one client IP address (0: no limit), so that
    /// half-open logins from one host cannot take every max_client_conn slot.
    pub max_logins_per_address: u32,
    /// On query_wait_timeout, send FATAL and close (PgBouncer's behaviour) instead of an ERROR
    /// that keeps the connection usable.
    pub query_wait_timeout_disconnect: bool,
    /// Send a NOTICE to a client queued this long for a server (0: never).
    #[serde(with = "duration")]
    pub query_wait_notify: Duration,
    /// Cancel a query running longer than this, then fail it (0: off).
    #[serde(with = "duration")]
    pub query_timeout: Duration,
    /// Disconnect a client idle inside a transaction longer than this (0: off).
    #[serde(with = "duration")]
    pub idle_transaction_timeout: Duration,
    /// Disconnect a client idle (outside a transaction) longer than this (0: off).
    #[serde(with = "duration")]
    pub client_idle_timeout: Duration,
    /// What groups a pool's clients for fair shares: application_name, client_addr or none.
    pub pool_share_key: ShareKey,
    /// Most of a pool's servers one group may hold while another group is waiting or active,
    /// as a fraction of pool_size (at least one server; 0: off, the pool is first come first
    /// served).
    pub max_pool_share: f64,
    /// A client idle inside a transaction longer than this while other clients wait for a
    /// server of its pool loses its server: the transaction is rolled back and the client
    /// disconnected with an error naming this key (0: off; nothing happens while nobody waits).
    #[serde(with = "duration")]
    pub idle_transaction_reclaim_timeout: Duration,
    /// Disconnect a client whose transaction stays open longer than this (0: off).
    #[serde(with = "duration")]
    pub transaction_timeout: Duration,
    /// Longest pause between attempts to log in to a server that keeps failing; attempts back off
    /// exponentially (with jitter) up to this.
    #[serde(with = "duration")]
    pub server_login_retry: Duration,
    /// While a server that worked is unreachable, starting up, shutting down or full (a
    /// restart), clients needing a new server wait up to this long (within query_wait_timeout)
    /// while logins are retried every 50-200 ms; a longer outage fails fast (0: never wait).
    #[serde(with = "duration")]
    pub server_outage_grace: Duration,
    /// Close a server this old when it is released (jittered per server; 0: never).
    #[serde(with = "duration")]
    pub server_lifetime: Duration,
    /// Close a server idle in the pool longer than this (0: never).
    #[serde(with = "duration")]
    pub server_idle_timeout: Duration,
    /// Query run on a server idle longer than `server_check_delay` before it is handed out
    /// (empty: sluice only checks that the socket is still open and quiet).
    pub server_check_query: String,
    /// Idle time after which a server is checked with `server_check_query` before use.
    #[serde(with = "duration")]
    pub server_check_delay: Duration,
    /// Run `server_reset_query` after every transaction in transaction mode too.
    pub server_reset_query_always: bool,
    /// Append the client's address to the application_name the server sees.
    pub application_name_add_host: bool,
    /// A client idle inside a transaction longer than this is reported as a leak (0: off).
    #[serde(with = "duration")]
    pub leak_idle_in_transaction_threshold: Duration,
    /// A client holding one server longer than this is reported as a leak (0: off).
    #[serde(with = "duration")]
    pub leak_hold_threshold: Duration,
    /// A client connected and idle outside a transaction longer than this is reported (0: off).
    #[serde(with = "duration")]
    pub leak_idle_client_threshold: Duration,
    /// Period over which SHOW STATS averages are computed.
    #[serde(with = "duration")]
    pub stats_period: Duration,
    /// Write the process id here at start (refusing to start while a live process holds it) and
    /// remove it at exit; relative to the config file. Read at start only.
    pub pidfile: Option<PathBuf>,
    /// Append log lines to this file too (reopened on SIGHUP and RELOAD, for logrotate);
    /// relative to the config file. Read at start only.
    pub logfile: Option<PathBuf>,
    /// Log line format: `text` or `json` (one JSON object per line). Read at start only.
    pub log_format: LogFormat,
    /// Log each client login (database, user, address, TLS), as PgBouncer's key.
    pub log_connections: bool,
    /// Log each client disconnection with its reason and duration, as PgBouncer's key.
    pub log_disconnections: bool,
    /// Log the errors sluice itself sends to clients, as PgBouncer's key.
    pub log_pooler_errors: bool,
    /// Log the totals line (rates and averages) every `stats_period`, as PgBouncer's key.
    pub log_stats: bool,
    /// Set SO_REUSEPORT on the TCP listener, so a second sluice can listen on the same port
    /// (rolling restarts: start the new one, drain the old one).
    pub so_reuseport: bool,
    /// This instance's id among peered instances (`[peers]`), encoded in every cancel key it
    /// issues so a peer that receives the cancel can forward it here; 0 turns peering off.
    pub peer_id: u16,
    /// Permissions of the unix socket file (octal, PgBouncer's default 0777).
    #[serde(with = "listen")]
    pub unix_socket_mode: u32,
    /// Group that owns the unix socket file (its mode then decides what the group may do).
    pub unix_socket_group: Option<String>,
    /// Pools of databases served through the `"*"` entry are freed after this long unused.
    #[serde(with = "duration")]
    pub autodb_idle_timeout: Duration,
    /// Hand out a pool's idle servers oldest-released first (round robin) instead of
    /// last-released first, so every server gets load (PgBouncer's key).
    pub server_round_robin: bool,
    /// Session mode: a server that RECONNECT or a RELOAD of its connection settings made
    /// outdated is closed at the end of its current transaction, and its client with it,
    /// instead of at the end of the session (PgBouncer's key).
    pub server_fast_close: bool,
    /// TCP keepalive on client and server sockets (PgBouncer's key).
    pub tcp_keepalive: bool,
    /// Keepalive probes sent before a silent peer is given up (0: the OS default).
    pub tcp_keepcnt: u32,
    /// Idle time before the first keepalive probe (0: the OS default).
    #[serde(with = "duration")]
    pub tcp_keepidle: Duration,
    /// Time between keepalive probes (0: the OS default).
    #[serde(with = "duration")]
    pub tcp_keepintvl: Duration,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the connection is
    /// dropped (0: the OS default). A bare number is milliseconds, as in PgBouncer.
    #[serde(with = "duration::millis")]
    pub tcp_user_timeout: Duration,
    /// How long a server host name's addresses are kept before it is looked up again
    /// (PgBouncer's key); 0 looks it up for every new server connection. A connection that
    /// fails on every kept address looks the name up again at once.
    #[serde(with = "duration")]
    pub dns_max_ttl: Duration,
    /// How long a failed lookup of a server host name is kept (PgBouncer's key); 0: not kept.
    #[serde(with = "duration")]
    pub dns_nxdomain_ttl: Duration,
}

/// How sessions use the `workers` threads (`runtime`). Read at start only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// One current-thread runtime per worker; each client session, and the servers it uses,
    /// stays on one thread (no work-stealing, no cross-thread wake-ups on the hot path): less
    /// CPU per transaction than `Shared` on most rows (docs/runtime.md). The default.
    #[default]
    PerCore,
    /// One multi-thread (work-stealing) runtime shared by all sessions.
    Shared,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message and fields).
    Json,
}

impl Default for PoolerConfig {
    fn default() -> Self {
        PoolerConfig {
            listen_addr: "127.0.0.1".to_string(),
            listen_port: 6432,
            unix_socket_dir: Some(PathBuf::from("/tmp")),
            pool_mode: PoolMode::Transaction,
            pin_session_state: PinSessionState::Pin,
            session_state_check: SessionStateCheck::WhenSeen,
            default_pool_size: 20,
            max_client_conn: 100,
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            auth_hba_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_string(),
            auth_dbname: None,
            auth_cache_ttl: Duration::from_secs(30),
            client_tls_sslmode: SslMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".to_string(),
            client_tls_ciphers: "default".to_string(),
            server_tls_sslmode: SslMode::Prefer,
            server_tls_ca_file: None,
            server_tls_key_file: None,
            server_tls_cert_file: None,
            server_tls_protocols: "secure".to_string(),
            server_tls_ciphers: "default".to_string(),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            ignore_startup_parameters: Vec::new(),
            server_connect_timeout: Duration::from_secs(15),
            client_login_timeout: Duration::from_secs(60),
            upgrade_timeout: Duration::from_secs(30),
            query_wait_timeout: Duration::from_secs(120),
            server_reset_query: "DISCARD ALL".to_string(),
            max_packet_size: 2_147_483_647,
            workers: 0,
            runtime: RuntimeKind::default(),
            max_prepared_statements: 200,
            max_client_prepared_statements: 1000,
            max_client_prepared_bytes: 16 << 20,
            notify_queue_size: 1000,
            notify_queue_bytes: 1 << 20,
            max_client_listen_channels: 256,
            max_pool_listen_channels: 10_000,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            max_logins_per_address: 100,
            query_wait_timeout_disconnect: false,
            query_wait_notify: Duration::from_secs(5),
            query_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            client_idle_timeout: Duration::ZERO,
            pool_share_key: ShareKey::ApplicationName,
            max_pool_share: 0.0,
            idle_transaction_reclaim_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            server_login_retry: Duration::from_secs(15),
            server_outage_grace: Duration::from_secs(5),
            server_lifetime: Duration::from_secs(3600),
            server_idle_timeout: Duration::from_secs(600),
            server_check_query: "select 1".to_string(),
            server_check_delay: Duration::from_secs(30),
            server_reset_query_always: false,
            application_name_add_host: false,
            stats_period: Duration::from_secs(60),
            leak_idle_in_transaction_threshold: Duration::from_secs(10),
            leak_hold_threshold: Duration::from_secs(60),
            leak_idle_client_threshold: Duration::from_secs(600),
            pidfile: None,
            logfile: None,
            log_format: LogFormat::Text,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            so_reuseport: false,
            peer_id: 0,
            unix_socket_mode: 0o777,
            unix_socket_group: None,
            autodb_idle_timeout: Duration::from_secs(3600),
            server_round_robin: false,
            server_fast_close: false,
            tcp_keepalive: true,
            tcp_keepcnt: 0,
            tcp_keepidle: Duration::ZERO,
            tcp_keepintvl: Duration::ZERO,
            tcp_user_timeout: Duration::ZERO,
            dns_max_ttl: Duration::from_secs(15),
            dns_nxdomain_ttl: Duration::from_secs(15),
        }
    }
}
