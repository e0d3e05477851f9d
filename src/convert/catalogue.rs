//! Every PgBouncer 1.26 configuration key, where it may appear, its PgBouncer default, and what
//! sluice does with it: the one table behind both `sluice convert` and docs/pgbouncer-keys.md.

/// The part of pgbouncer.ini a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// `[pgbouncer]` settings.
    Pgbouncer,
    /// Connection-string parameters of a `[databases]` entry.
    Database,
    /// Settings of a `[users]` entry.
    User,
    /// Connection-string parameters of a `[peers]` entry.
    Peer,
}

/// How a value is written in pgbouncer.ini, and so how it is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text kept as it is.
    Text,
    /// A whole number.
    Int,
    /// 0/1 (also on/off, yes/no, true/false).
    Bool,
    /// Seconds, possibly fractional: a sluice duration.
    Seconds,
    /// Milliseconds: a sluice duration.
    Millis,
    /// A comma-separated list: a TOML array of strings.
    List,
}

/// What sluice does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// sluice has the key under the same name and meaning.
    Same,
    /// Converted to another sluice key (in the same table).
    Renamed(&'static str),
    /// Not supported: dropping it changes behaviour; the reason says how.
    Unsupported(&'static str),
    /// Nothing to do in sluice (the behaviour is already there, or does not apply); the reason
    /// says why.
    Meaningless(&'static str),
}

/// One PgBouncer key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyInfo {
    /// Where it may appear.
    pub section: Section,
    /// PgBouncer's name.
    pub name: &'static str,
    /// How its value is written.
    pub kind: Kind,
    /// PgBouncer's default (None: not set).
    pub default: Option<&'static str>,
    /// What sluice does with it.
    pub fate: Fate,
}

use Fate::{Meaningless, Renamed, Same, Unsupported};
use Kind::{Bool, Int, List, Millis, Seconds, Text};
use Section::{Database, Peer, Pgbouncer, User};

const fn key(
    section: Section,
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    fate: Fate,
) -> KeyInfo {
    KeyInfo {
        section,
        name,
        kind,
        default,
        fate,
    }
}

/// Reason shared by the TLS 1.3 cipher keys.
const TLS13: &str = "rustls offers its own TLS 1.3 suites; choose suites with client_tls_ciphers/server_tls_ciphers (rustls names)";

/// Every key of PgBouncer 1.26, by section, in the order of PgBouncer's documentation.
pub(crate) const KEYS: &[KeyInfo] = &[
    // [pgbouncer]: generic settings
    key(Pgbouncer, "logfile", Text, None, Same),
    key(Pgbouncer, "pidfile", Text, None, Same),
    key(Pgbouncer, "listen_addr", Text, None, Same),
    key(Pgbouncer, "listen_port", Int, Some("6432"), Same),
    key(Pgbouncer, "unix_socket_dir", Text, Some("/tmp"), Same),
    key(Pgbouncer, "unix_socket_mode", Text, Some("0777"), Same),
    key(Pgbouncer, "unix_socket_group", Text, None, Same),
    key(
        Pgbouncer,
        "user",
        Text,
        None,
        Unsupported(
            "sluice does not change its Unix user; start it as that user (packaging/sluice.service runs as `sluice`)",
        ),
    ),
    key(Pgbouncer, "pool_mode", Text, Some("session"), Same),
    key(Pgbouncer, "max_client_conn", Int, Some("100"), Same),
    key(Pgbouncer, "default_pool_size", Int, Some("20"), Same),
    key(Pgbouncer, "min_pool_size", Int, Some("0"), Same),
    key(Pgbouncer, "reserve_pool_size", Int, Some("0"), Same),
    key(Pgbouncer, "reserve_pool_timeout", Seconds, Some("5"), Same),
    key(Pgbouncer, "max_db_connections", Int, Some("0"), Same),
    key(Pgbouncer, "max_db_client_connections", Int, Some("0"), Same),
    key(Pgbouncer, "max_user_connections", Int, Some("0"), Same),
    key(Pgbouncer, "max_user_client_connections", Int, Some("0"), Same),
    key(Pgbouncer, "server_round_robin", Bool, Some("0"), Same),
    key(
        Pgbouncer,
        "track_extra_parameters",
        List,
        Some("IntervalStyle"),
        Meaningless(
            "sluice keeps every parameter PostgreSQL reports for each client and restores it on the next server",
        ),
    ),
    key(Pgbouncer, "ignore_startup_parameters", List, None, Same),
    key(Pgbouncer, "peer_id", Int, Some("0"), Same),
    key(
        Pgbouncer,
        "disable_pqexec",
        Bool,
        Some("0"),
        Unsupported("the simple query protocol is always allowed"),
    ),
    key(Pgbouncer, "application_name_add_host", Bool, Some("0"), Same),
    key(
        Pgbouncer,
        "conffile",
        Text,
        None,
        Meaningless("the configuration file is the one given on the command line"),
    ),
    key(
        Pgbouncer,
        "service_name",
        Text,
        Some("pgbouncer"),
        Meaningless("Windows service registration"),
    ),
    key(
        Pgbouncer,
        "job_name",
        Text,
        None,
        Meaningless("Windows service registration"),
    ),
    key(Pgbouncer, "stats_period", Seconds, Some("60"), Same),
    key(Pgbouncer, "max_prepared_statements", Int, Some("200"), Same),
    key(
        Pgbouncer,
        "scram_iterations",
        Int,
        Some("4096"),
        Unsupported(
            "the SCRAM verifier sluice derives from a plaintext password always uses 4096 iterations (PgBouncer's default)",
        ),
    ),
    // authentication
    key(Pgbouncer, "auth_type", Text, Some("md5"), Same),
    key(Pgbouncer, "auth_hba_file", Text, None, Same),
    key(
        Pgbouncer,
        "auth_ident_file",
        Text,
        None,
        Unsupported("ident map files are not read: a map= of an hba line has no map to use"),
    ),
    key(Pgbouncer, "auth_file", Text, None, Same),
    key(Pgbouncer, "auth_user", Text, None, Same),
    key(Pgbouncer, "auth_query", Text, None, Same),
    key(Pgbouncer, "auth_dbname", Text, None, Same),
    key(
        Pgbouncer,
        "auth_ldap_options",
        Text,
        None,
        Unsupported("no LDAP authentication"),
    ),
    // logging
    key(
        Pgbouncer,
        "syslog",
        Bool,
        Some("0"),
        Unsupported("no syslog: sluice logs to stderr (the journal under systemd) and to logfile"),
    ),
    key(
        Pgbouncer,
        "syslog_ident",
        Text,
        Some("pgbouncer"),
        Meaningless("no syslog (see syslog)"),
    ),
    key(
        Pgbouncer,
        "syslog_facility",
        Text,
        Some("daemon"),
        Meaningless("no syslog (see syslog)"),
    ),
    key(Pgbouncer, "log_connections", Bool, Some("1"), Same),
    key(Pgbouncer, "log_disconnections", Bool, Some("1"), Same),
    key(Pgbouncer, "log_pooler_errors", Bool, Some("1"), Same),
    key(Pgbouncer, "log_stats", Bool, Some("1"), Same),
    key(
        Pgbouncer,
        "verbose",
        Int,
        Some("0"),
        Unsupported("set the log level with the SLUICE_LOG environment variable (e.g. SLUICE_LOG=debug)"),
    ),
    // console access
    key(Pgbouncer, "admin_users", List, None, Same),
    key(Pgbouncer, "stats_users", List, None, Same),
    // connection sanity checks, timeouts
    key(Pgbouncer, "server_reset_query", Text, Some("DISCARD ALL"), Same),
    key(Pgbouncer, "server_reset_query_always", Bool, Some("0"), Same),
    key(Pgbouncer, "server_check_delay", Seconds, Some("30"), Same),
    key(Pgbouncer, "server_check_query", Text, Some("<empty>"), Same),
    key(Pgbouncer, "server_fast_close", Bool, Some("0"), Same),
    key(Pgbouncer, "server_lifetime", Seconds, Some("3600"), Same),
    key(Pgbouncer, "server_idle_timeout", Seconds, Some("600"), Same),
    key(Pgbouncer, "server_connect_timeout", Seconds, Some("15"), Same),
    key(Pgbouncer, "server_login_retry", Seconds, Some("15"), Same),
    key(Pgbouncer, "client_login_timeout", Seconds, Some("60"), Same),
    key(Pgbouncer, "autodb_idle_timeout", Seconds, Some("3600"), Same),
    key(
        Pgbouncer,
        "pool_idle_timeout",
        Seconds,
        Some("0"),
        Unsupported(
            "pools of listed databases are kept; only auto-database pools are freed (autodb_idle_timeout)",
        ),
    ),
    key(Pgbouncer, "dns_max_ttl", Seconds, Some("15"), Same),
    key(Pgbouncer, "dns_nxdomain_ttl", Seconds, Some("15"), Same),
    key(
        Pgbouncer,
        "dns_zone_check_period",
        Seconds,
        Some("0"),
        Meaningless(
            "no zone serial checks: a name is looked up again after dns_max_ttl, and at once when every kept address fails",
        ),
    ),
    key(
        Pgbouncer,
        "resolv_conf",
        Text,
        None,
        Unsupported("sluice uses the system resolver (/etc/resolv.conf)"),
    ),
    key(Pgbouncer, "query_wait_notify", Seconds, Some("5"), Same),
    key(
        Pgbouncer,
        "login_notify_message",
        Text,
        None,
        Unsupported("no welcome NOTICE after login"),
    ),
    // TLS
    key(Pgbouncer, "client_tls_sslmode", Text, Some("disable"), Same),
    key(Pgbouncer, "client_tls_key_file", Text, None, Same),
    key(Pgbouncer, "client_tls_cert_file", Text, None, Same),
    key(Pgbouncer, "client_tls_ca_file", Text, None, Same),
    key(Pgbouncer, "client_tls_protocols", Text, Some("secure"), Same),
    key(Pgbouncer, "client_tls_ciphers", Text, Some("default"), Same),
    key(Pgbouncer, "client_tls13_ciphers", Text, None, Unsupported(TLS13)),
    key(
        Pgbouncer,
        "client_tls_ecdhcurve",
        Text,
        Some("auto"),
        Meaningless("rustls negotiates its own key-exchange groups"),
    ),
    key(
        Pgbouncer,
        "client_tls_dheparams",
        Text,
        Some("auto"),
        Meaningless("rustls does no finite-field DH"),
    ),
    key(Pgbouncer, "server_tls_sslmode", Text, Some("prefer"), Same),
    key(Pgbouncer, "server_tls_ca_file", Text, None, Same),
    key(Pgbouncer, "server_tls_key_file", Text, None, Same),
    key(Pgbouncer, "server_tls_cert_file", Text, None, Same),
    key(Pgbouncer, "server_tls_protocols", Text, Some("secure"), Same),
    key(Pgbouncer, "server_tls_ciphers", Text, Some("default"), Same),
    key(Pgbouncer, "server_tls13_ciphers", Text, None, Unsupported(TLS13)),
    // dangerous timeouts
    key(Pgbouncer, "query_timeout", Seconds, Some("0"), Same),
    key(Pgbouncer, "query_wait_timeout", Seconds, Some("120"), Same),
    key(
        Pgbouncer,
        "cancel_wait_timeout",
        Seconds,
        Some("10"),
        Meaningless(
            "a cancel request is forwarded at once on a connection of its own, given up after 5 seconds",
        ),
    ),
    key(Pgbouncer, "client_idle_timeout", Seconds, Some("0"), Same),
    key(Pgbouncer, "idle_transaction_timeout", Seconds, Some("0"), Same),
    key(Pgbouncer, "transaction_timeout", Seconds, Some("0"), Same),
    // low-level network settings
    key(
        Pgbouncer,
        "pkt_buf",
        Int,
        Some("4096"),
        Meaningless("sluice sizes its buffers itself"),
    ),
    key(Pgbouncer, "max_packet_size", Int, Some("2147483647"), Same),
    key(
        Pgbouncer,
        "listen_backlog",
        Int,
        Some("128"),
        Meaningless("sluice listens with a backlog of 4096 (capped by net.core.somaxconn)"),
    ),
    key(
        Pgbouncer,
        "sbuf_loopcnt",
        Int,
        Some("5"),
        Meaningless(
            "each connection is its own task; the scheduler keeps one busy connection from stalling others",
        ),
    ),
    key(Pgbouncer, "so_reuseport", Bool, Some("0"), Same),
    key(
        Pgbouncer,
        "tcp_defer_accept",
        Bool,
        Some("1"),
        Meaningless("an optimisation of accept(); behaviour is the same without it"),
    ),
    key(
        Pgbouncer,
        "tcp_socket_buffer",
        Int,
        None,
        Meaningless("the kernel's socket buffer autotuning is used"),
    ),
    key(Pgbouncer, "tcp_keepalive", Bool, Some("1"), Same),
    key(Pgbouncer, "tcp_keepcnt", Int, None, Same),
    key(Pgbouncer, "tcp_keepidle", Seconds, None, Same),
    key(Pgbouncer, "tcp_keepintvl", Seconds, None, Same),
    key(Pgbouncer, "tcp_user_timeout", Millis, Some("0"), Same),
    // [databases] connection-string parameters
    key(Database, "dbname", Text, None, Same),
    key(Database, "host", Text, None, Same),
    key(Database, "port", Int, Some("5432"), Same),
    key(Database, "user", Text, None, Same),
    key(Database, "password", Text, None, Same),
    key(
        Database,
        "auth_user",
        Text,
        None,
        Unsupported("auth_user is global in sluice ([pooler] auth_user)"),
    ),
    key(
        Database,
        "auth_query",
        Text,
        None,
        Unsupported("auth_query is global in sluice ([pooler] auth_query)"),
    ),
    key(
        Database,
        "auth_dbname",
        Text,
        None,
        Unsupported("auth_dbname is global in sluice ([pooler] auth_dbname)"),
    ),
    key(Database, "pool_size", Int, None, Same),
    key(Database, "min_pool_size", Int, None, Same),
    key(Database, "reserve_pool_size", Int, None, Same),
    key(Database, "reserve_pool", Int, None, Renamed("reserve_pool_size")),
    key(Database, "connect_query", Text, None, Same),
    key(Database, "pool_mode", Text, None, Same),
    key(Database, "query_wait_timeout", Seconds, None, Same),
    key(Database, "load_balance_hosts", Text, Some("round-robin"), Same),
    key(Database, "target_session_attrs", Text, Some("any"), Same),
    key(Database, "max_db_connections", Int, None, Same),
    key(Database, "max_db_client_connections", Int, None, Same),
    key(
        Database,
        "server_lifetime",
        Seconds,
        None,
        Unsupported("server_lifetime is global in sluice ([pooler] server_lifetime)"),
    ),
    key(Database, "client_encoding", Text, None, Same),
    key(Database, "datestyle", Text, None, Same),
    key(Database, "timezone", Text, None, Same),
    key(Database, "application_name", Text, None, Same),
    // [users]
    key(
        User,
        "pool_size",
        Int,
        None,
        Unsupported("pool_size is per database in sluice ([databases.NAME] pool_size)"),
    ),
    key(
        User,
        "reserve_pool_size",
        Int,
        None,
        Unsupported("reserve_pool_size is per database in sluice"),
    ),
    key(User, "pool_mode", Text, None, Same),
    key(User, "max_user_connections", Int, None, Same),
    key(
        User,
        "query_timeout",
        Seconds,
        None,
        Unsupported("query_timeout is global in sluice ([pooler] query_timeout)"),
    ),
    key(User, "query_wait_timeout", Seconds, None, Same),
    key(
        User,
        "idle_transaction_timeout",
        Seconds,
        None,
        Unsupported("idle_transaction_timeout is global in sluice"),
    ),
    key(
        User,
        "transaction_timeout",
        Seconds,
        None,
        Unsupported("transaction_timeout is global in sluice"),
    ),
    key(
        User,
        "client_idle_timeout",
        Seconds,
        None,
        Unsupported("client_idle_timeout is global in sluice"),
    ),
    key(User, "max_user_client_connections", Int, None, Same),
];

/// `[peers]` connection-string parameters.
const PEER_KEYS: &[KeyInfo] = &[
    key(Peer, "host", Text, None, Same),
    key(Peer, "port", Int, Some("6432"), Same),
    key(
        Peer,
        "pool_size",
        Int,
        None,
        Meaningless("each forwarded cancel request goes on a connection of its own, within 5 seconds"),
    ),
];

/// The entry for `name` in `section`, if PgBouncer 1.26 has such a key.
pub(crate) fn lookup(section: Section, name: &str) -> Option<&'static KeyInfo> {
    KEYS.iter()
        .chain(PEER_KEYS)
        .find(|k| k.section == section && k.name == name)
}

/// Values of a supported key that sluice does not take (the converter keeps them as comments,
/// src/convert/values.rs), or how its meaning differs.
fn caveat(section: Section, name: &str) -> Option<&'static str> {
    Some(match (section, name) {
        (Pgbouncer, "listen_addr") => {
            "sluice's `*` is every IPv4 address (list `::` too for IPv6); host names other than `localhost` are not resolved"
        }
        (Pgbouncer, "auth_type") => "`any`, `ldap` and `pam` are unsupported",
        (Pgbouncer, "client_tls_ciphers" | "server_tls_ciphers") => {
            "rustls suite names, not OpenSSL cipher lists (`default`, `secure`, `fast`, `normal` mean rustls's defaults)"
        }
        (Pgbouncer, "client_tls_protocols" | "server_tls_protocols") => "TLS 1.2 and 1.3 only (rustls)",
        (Pgbouncer, "server_check_query") => {
            "`<empty>` is not needed: sluice's default check (`select 1`) does the same"
        }
        (Pgbouncer | Database | User, "query_wait_timeout") => {
            "`0` (wait forever) is unsupported: every wait has a deadline"
        }
        (Pgbouncer | Database | User, "pool_mode") => "`statement` is unsupported",
        (Pgbouncer, "tcp_keepidle" | "tcp_keepintvl") => "a duration in whole seconds",
        (Database, "connect_query") => {
            "run again after server_reset_query; a failing query fails the server login (PgBouncer logs it and goes on)"
        }
        (Database, "host") => "`@` (abstract unix sockets) is unsupported",
        (Database, "load_balance_hosts") => {
            "sluice's default is `disable`: the converter writes `round-robin` for a host list"
        }
        _ => return None,
    })
}

/// The status column of the key table, in words.
pub(crate) fn status(fate: Fate) -> String {
    match fate {
        Same => "supported (same name)".to_string(),
        Renamed(to) => format!("converted to `{to}`"),
        Unsupported(why) => format!("unsupported: {why}"),
        Meaningless(why) => format!("not needed: {why}"),
    }
}

/// The key table as Markdown: one table per section, every key with its PgBouncer default and
/// its status in sluice (docs/pgbouncer-keys.md holds this text between its markers).
pub fn markdown_table() -> String {
    let mut out = String::new();
    for (section, title) in [
        (Pgbouncer, "`[pgbouncer]` (sluice: `[pooler]`)"),
        (
            Database,
            "`[databases]` connection-string parameters (sluice: `[databases.NAME]`)",
        ),
        (User, "`[users]` (sluice: `[users.NAME]`)"),
        (
            Peer,
            "`[peers]` connection-string parameters (sluice: `[peers.ID]`)",
        ),
    ] {
        out.push_str(&format!(
            "\n### {title}\n\n| key | PgBouncer default | sluice |\n| --- | --- | --- |\n"
        ));
        for k in KEYS.iter().chain(PEER_KEYS).filter(|k| k.section == section) {
            let default = k.default.map_or("not set".to_string(), |d| format!("`{d}`"));
            let status = match caveat(k.section, k.name) {
                Some(c) => format!("{}; {c}", status(k.fate)),
                None => status(k.fate),
            };
            out.push_str(&format!("| `{}` | {default} | {status} |\n", k.name));
        }
    }
    out
}
