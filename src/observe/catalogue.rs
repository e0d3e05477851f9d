//! The series the exporter publishes, by name, with their help texts: SHOW POOLS, STATS_TOTALS,
//! DATABASES and LISTS under pgbouncer_exporter's names, and sluice's own. The registry
//! describes them when it is made; the scrape (`metrics`, above) sets them from the figures.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;

/// SHOW POOLS columns -> gauges `pgbouncer_pools_<name>{database,user}`.
pub(crate) const POOL_GAUGES: [(&str, &str); 12] = [
    (
        "client_active_connections",
        "Client connections linked to a server or idle (cl_active)",
    ),
    (
        "client_waiting_connections",
        "Client connections waiting for a server (cl_waiting)",
    ),
    (
        "client_active_cancel_connections",
        "Clients forwarding a cancel request (cl_active_cancel_req)",
    ),
    (
        "client_waiting_cancel_connections",
        "Cancel requests waiting for a server (cl_waiting_cancel_req)",
    ),
    (
        "server_active_connections",
        "Servers linked to a client (sv_active)",
    ),
    (
        "server_active_cancel_connections",
        "Servers forwarding a cancel request (sv_active_cancel)",
    ),
    (
        "server_being_canceled_connections",
        "Servers being canceled (sv_being_canceled)",
    ),
    ("server_idle_connections", "Idle servers ready for use (sv_idle)"),
    (
        "server_used_connections",
        "Idle servers due for a check (sv_used)",
    ),
    (
        "server_testing_connections",
        "Servers being checked or reset (sv_tested)",
    ),
    ("server_login_connections", "Servers logging in (sv_login)"),
    (
        "client_maxwait_seconds",
        "Age of the oldest waiting client, whole seconds (maxwait)",
    ),
];

/// SHOW STATS_TOTALS counters -> `pgbouncer_stats_totals_<name>{database}`.
pub(crate) const STATS_COUNTERS: [(&str, &str); 11] = [
    ("queries_pooled_total", "Queries pooled (query_count)"),
    (
        "queries_duration_seconds_total",
        "Time spent in queries (query_time)",
    ),
    (
        "received_bytes_total",
        "Bytes received from clients (bytes_received)",
    ),
    ("sent_bytes_total", "Bytes sent to clients (bytes_sent)"),
    (
        "client_wait_seconds_total",
        "Time clients waited for a server (wait_time)",
    ),
    (
        "sql_transactions_pooled_total",
        "Transactions pooled (xact_count)",
    ),
    (
        "server_in_transaction_seconds_total",
        "Time servers spent in transactions (xact_time)",
    ),
    (
        "client_parses_total",
        "Parse requests from clients (client_parse_count)",
    ),
    (
        "server_parses_total",
        "Parse requests to servers (server_parse_count)",
    ),
    ("binds_total", "Bind requests (bind_count)"),
    (
        "server_assignments_total",
        "Servers assigned to clients (server_assignment_count)",
    ),
];

/// SHOW DATABASES columns -> gauges `pgbouncer_databases_<name>{name,host,port,database,force_user,pool_mode}`.
pub(crate) const DATABASE_GAUGES: [(&str, &str); 6] = [
    ("pool_size", "Pool size of the database's pools"),
    ("reserve_pool", "Reserve pool size"),
    ("max_connections", "max_db_connections (0: no limit)"),
    ("current_connections", "Server connections open for the database"),
    ("paused", "1 while the database is paused"),
    ("disabled", "1 while the database is disabled"),
];

/// SHOW LISTS rows the exporter maps, and the gauge each becomes.
pub(crate) const LIST_GAUGES: [(&str, &str); 11] = [
    ("databases", "pgbouncer_databases"),
    ("users", "pgbouncer_users"),
    ("pools", "pgbouncer_pools"),
    ("free_clients", "pgbouncer_free_clients"),
    ("used_clients", "pgbouncer_used_clients"),
    ("login_clients", "pgbouncer_login_clients"),
    ("free_servers", "pgbouncer_free_servers"),
    ("used_servers", "pgbouncer_used_servers"),
    ("dns_names", "pgbouncer_cached_dns_names"),
    ("dns_zones", "pgbouncer_cached_dns_zones"),
    ("dns_queries", "pgbouncer_in_flight_dns_queries"),
];

/// Gives every series its `# HELP` line: the one list of the series the endpoint publishes
/// (histograms by their base name).
pub(crate) fn describe(r: &impl Recorder) {
    let g = |name: String, help: &str| {
        r.describe_gauge(KeyName::from(name), None, SharedString::from(help.to_string()));
    };
    let c = |name: String, help: &str| {
        r.describe_counter(KeyName::from(name), None, SharedString::from(help.to_string()));
    };
    let h = |name: &str, help: &str| {
        r.describe_histogram(
            KeyName::from(name.to_string()),
            None,
            SharedString::from(help.to_string()),
        );
    };
    g(
        "pgbouncer_up".into(),
        "The pooler answers (always 1 when this endpoint answers)",
    );
    g("pgbouncer_version_info".into(), "The pooler's version");
    for (name, help) in POOL_GAUGES {
        g(format!("pgbouncer_pools_{name}"), help);
    }
    for (name, help) in STATS_COUNTERS.iter().filter(|(n, _)| !n.contains("seconds")) {
        c(format!("pgbouncer_stats_totals_{name}"), help);
    }
    for (name, help) in DATABASE_GAUGES {
        g(format!("pgbouncer_databases_{name}"), help);
    }
    for (list, name) in LIST_GAUGES {
        g(
            name.to_string(),
            &format!("Items in the {list} list (SHOW LISTS)"),
        );
    }
    g(
        "pgbouncer_client_connections".into(),
        "Client connections by state (SHOW CLIENTS)",
    );
    g(
        "pgbouncer_config_max_client_connections".into(),
        "max_client_conn",
    );
    g(
        "pgbouncer_config_max_user_connections".into(),
        "max_user_connections",
    );
    g("sluice_build_info".into(), "sluice's version");
    g(
        "sluice_host_up".into(),
        "1 while a host of a host list takes logins (its role aside), 0 while it is backed off",
    );
    g(
        "sluice_host_role".into(),
        "1 for the role (primary, read-only primary, standby) a host was last found in",
    );
    g(
        "sluice_host_server_connections".into(),
        "Server connections open to a host of a host list, over all its database's pools",
    );
    g(
        "sluice_pinned_clients".into(),
        "Transaction-mode clients keeping their server for session state that cannot move, by reason",
    );
    g(
        "sluice_listen_channels".into(),
        "Channels the clients of a transaction-mode pool LISTEN on (docs/listen-notify.md)",
    );
    g(
        "sluice_listen_clients".into(),
        "Clients of a transaction-mode pool with a LISTEN subscription",
    );
    g(
        "sluice_listener_up".into(),
        "1 while a pool's listening connection is open and LISTENing, 0 while it is being (re)opened or closed",
    );
    c(
        "sluice_notifications_delivered_total".into(),
        "Notifications queued for LISTENing clients of a pool",
    );
    c(
        "sluice_notifications_dropped_total".into(),
        "Notifications dropped for clients over notify_queue_size / notify_queue_bytes",
    );
    c(
        "sluice_listener_connects_total".into(),
        "Listening connections a pool opened (more than one: it reconnected)",
    );
    g(
        "sluice_leaks_current".into(),
        "Clients currently suspected of leaking, by kind",
    );
    c("sluice_leaks_total".into(), "Leaks detected since start, by kind");
    c(
        "sluice_abandoned_transactions_total".into(),
        "Clients that disconnected mid-transaction",
    );
    c(
        "sluice_reclaimed_transactions_total".into(),
        "Idle transactions rolled back to serve waiting clients (idle_transaction_reclaim_timeout)",
    );
    for (name, help) in SHARE_GAUGES {
        g(format!("sluice_pool_share_{name}"), help);
    }
    c("sluice_server_connects_total".into(), "Server connections opened");
    c(
        "sluice_server_connect_failures_total".into(),
        "Server connections that failed to open or log in",
    );
    c(
        "sluice_server_recycled_total".into(),
        "Server connections closed for replacement, by reason",
    );
    c(
        "sluice_query_wait_timeouts_total".into(),
        "Requests that waited query_wait_timeout for a server",
    );
    h(
        "sluice_checkout_wait_seconds",
        "Time clients waited for a server, per pool",
    );
    h(
        "sluice_transaction_duration_seconds",
        "Transaction durations, per pool",
    );
    h(
        "sluice_query_duration_seconds",
        "Request durations (to ReadyForQuery), per pool",
    );
}

/// Per share group gauges (SHOW POOL_SHARES), by suffix.
pub(crate) const SHARE_GAUGES: [(&str, &str); 4] = [
    (
        "active",
        "Servers a share group holds (SHOW POOL_SHARES cl_active)",
    ),
    ("waiting", "Clients of a share group waiting for a server"),
    (
        "idle_in_transaction",
        "Servers a share group holds idle in a transaction",
    ),
    (
        "cap",
        "Most servers one share group may hold while others are present (0: shares off)",
    ),
];

/// Every series name [`describe`] gives a help text, in its order, and the float counters the
/// scrape writes itself (`STATS_COUNTERS` in seconds): what docs/metrics.md must document
/// (`tests/docs.rs`).
pub(crate) fn series_names() -> Vec<String> {
    let names = NameCollector(Mutex::new(Vec::new()));
    describe(&names);
    let mut names = names.0.into_inner();
    for (name, _) in STATS_COUNTERS.iter().filter(|(n, _)| n.contains("seconds")) {
        names.push(format!("pgbouncer_stats_totals_{name}"));
    }
    names
}

/// A recorder that only notes the names described to it.
struct NameCollector(Mutex<Vec<String>>);

impl NameCollector {
    fn note(&self, key: KeyName) {
        self.0.lock().push(key.as_str().to_string());
    }
}

impl Recorder for NameCollector {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.note(key);
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.note(key);
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.note(key);
    }

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
