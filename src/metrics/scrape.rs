//! The series refreshed at scrape time, from the same figures the admin console shows: SHOW
//! POOLS, STATS_TOTALS, DATABASES, LISTS, CONFIG, CLIENTS and VERSION under pgbouncer_exporter's
//! names and labels, and sluice's leak counts.

use crate::clients::ClientPhase;
use crate::observe::catalogue::{DATABASE_GAUGES, LIST_GAUGES, POOL_GAUGES, SHARE_GAUGES, STATS_COUNTERS};
use crate::observe::figures;
use crate::observe::prometheus::{METADATA, Metrics};
use crate::shared::Shared;
use metrics::{Key, KeyName, Label, Recorder};
use std::collections::{BTreeMap, HashSet};

/// Sets gauges and counters for one scrape, and zeroes gauges that were set last time but not now.
struct Scrape<'a> {
    m: &'a Metrics,
    gauges: HashSet<Key>,
    /// `pgbouncer_stats_totals_*_seconds_total` values: (suffix, database) -> seconds.
    float_counters: BTreeMap<(&'static str, String), f64>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect()
}

impl Scrape<'_> {
    fn gauge(&mut self, name: impl Into<KeyName>, pairs: &[(&'static str, &str)], value: f64) {
        let key = Key::from_parts(name.into(), labels(pairs));
        self.m.recorder().register_gauge(&key, &METADATA).set(value);
        self.gauges.insert(key);
    }

    fn counter(&mut self, name: impl Into<KeyName>, pairs: &[(&'static str, &str)], value: u64) {
        let key = Key::from_parts(name.into(), labels(pairs));
        self.m
            .recorder()
            .register_counter(&key, &METADATA)
            .absolute(value);
    }

    fn float_counter(&mut self, suffix: &'static str, database: &str, value: f64) {
        self.float_counters.insert((suffix, database.to_string()), value);
    }

    /// Zeroes vanished gauges; returns the float counters' exposition text.
    fn finish(self) -> String {
        let mut last = self.m.last_gauges().lock();
        for gone in last.difference(&self.gauges) {
            self.m.recorder().register_gauge(gone, &METADATA).set(0.0);
        }
        *last = self.gauges;
        let mut out = String::new();
        for (suffix, help) in STATS_COUNTERS.iter().filter(|(n, _)| n.contains("seconds")) {
            let name = format!("pgbouncer_stats_totals_{suffix}");
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for ((_, db), v) in self.float_counters.iter().filter(|((s, _), _)| s == suffix) {
                out.push_str(&format!("{name}{{database=\"{}\"}} {v}\n", escape(db)));
            }
            out.push('\n');
        }
        out
    }
}

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Leak counts: (current by kind and application, total by kind and application, abandoned).
fn leak_counts(shared: &Shared) -> LeakCounts {
    let leaks = &shared.leaks;
    (
        leaks.current_counts(),
        leaks.total_counts(),
        leaks.abandoned_total(),
    )
}

type LeakCounts = (
    Vec<(&'static str, String, u64)>,
    Vec<(&'static str, String, u64)>,
    u64,
);

/// Refreshes every scrape-time series from the live state.
/// Returns the exposition text of the series rendered here rather than by the recorder.
pub(super) fn refresh(m: &Metrics, shared: &Shared) -> String {
    let mut s = Scrape {
        m,
        gauges: HashSet::new(),
        float_counters: BTreeMap::new(),
    };
    let version = env!("CARGO_PKG_VERSION");
    s.gauge("pgbouncer_up", &[], 1.0);
    s.gauge(
        "pgbouncer_version_info",
        &[("version", &figures::version_text())],
        1.0,
    );
    s.gauge("sluice_build_info", &[("version", version)], 1.0);

    for (pool, f) in shared.pool_figures() {
        let l = [
            ("database", pool.key.database.as_str()),
            ("user", pool.key.user.as_str()),
        ];
        let values = [
            f.cl_active,
            f.cl_waiting,
            0,
            0,
            f.sv_active,
            0,
            0,
            f.sv_idle,
            f.sv_used,
            f.sv_tested,
            f.sv_login,
            f.max_wait.as_secs() as usize,
        ];
        for ((name, _), v) in POOL_GAUGES.iter().zip(values) {
            s.gauge(format!("pgbouncer_pools_{name}"), &l, v as f64);
        }
    }

    for (db, t) in shared.stats_totals() {
        let values = [
            t.query_count,
            t.query_time_us,
            t.bytes_received,
            t.bytes_sent,
            t.wait_time_us,
        ];
        let values = values.into_iter().chain([
            t.xact_count,
            t.xact_time_us,
            t.client_parse_count,
            t.server_parse_count,
            t.bind_count,
            t.server_assignment_count,
        ]);
        for ((name, _), v) in STATS_COUNTERS.iter().zip(values) {
            // Times are kept in microseconds and published in seconds, as the exporter does;
            // the recorder's counters hold integers only, so these are rendered here.
            if name.contains("seconds") {
                s.float_counter(name, &db, v as f64 / 1e6);
            } else {
                s.counter(format!("pgbouncer_stats_totals_{name}"), &[("database", &db)], v);
            }
        }
    }

    for d in shared.database_figures() {
        let port = d.port.to_string();
        let l = [
            ("name", d.name.as_str()),
            ("host", d.host.as_str()),
            ("port", port.as_str()),
            ("database", d.dbname.as_str()),
            ("force_user", d.force_user.as_deref().unwrap_or("")),
            ("pool_mode", d.pool_mode.unwrap_or("")),
        ];
        let values = [
            d.pool_size,
            d.reserve_pool_size,
            d.max_connections,
            d.current_connections,
            usize::from(d.paused),
            usize::from(d.disabled),
        ];
        for ((name, _), v) in DATABASE_GAUGES.iter().zip(values) {
            s.gauge(format!("pgbouncer_databases_{name}"), &l, v as f64);
        }
    }

    host_gauges(&mut s, shared);
    listen_series(&mut s, shared);

    let lists: BTreeMap<&str, usize> = shared.list_figures().into_iter().collect();
    for (list, name) in LIST_GAUGES {
        s.gauge(name, &[], lists.get(list).copied().unwrap_or(0) as f64);
    }

    // application_name is the client's to choose: past the cap, names are labelled `other`.
    let apps = shared.leaks.application_names();
    let mut by_state: BTreeMap<(String, String, String, &'static str), usize> = BTreeMap::new();
    let mut pinned: BTreeMap<(String, String, &'static str), usize> = BTreeMap::new();
    for c in shared.clients() {
        for reason in c.pins().reasons() {
            let key = (c.database().to_string(), c.user().to_string(), reason.as_str());
            *pinned.entry(key).or_default() += 1;
        }
        let state = match c.live().phase {
            ClientPhase::Waiting => "waiting",
            ClientPhase::Idle => "idle",
            _ => "active",
        };
        let key = (
            c.database().to_string(),
            c.user().to_string(),
            apps.fold(&c.application_name()),
            state,
        );
        *by_state.entry(key).or_default() += 1;
    }
    for ((database, user, app, state), count) in &by_state {
        let l = [
            ("database", database.as_str()),
            ("user", user.as_str()),
            ("application_name", app.as_str()),
            ("state", *state),
        ];
        s.gauge("pgbouncer_client_connections", &l, *count as f64);
    }
    for ((database, user, reason), count) in &pinned {
        let l = [
            ("database", database.as_str()),
            ("user", user.as_str()),
            ("reason", *reason),
        ];
        s.gauge("sluice_pinned_clients", &l, *count as f64);
    }

    let config = shared.config.load();
    s.gauge(
        "pgbouncer_config_max_client_connections",
        &[],
        f64::from(config.pooler.max_client_conn),
    );
    s.gauge(
        "pgbouncer_config_max_user_connections",
        &[],
        f64::from(config.pooler.max_user_connections),
    );

    let (current, total, abandoned) = leak_counts(shared);
    for (kind, app, n) in &current {
        s.gauge(
            "sluice_leaks_current",
            &[("kind", kind), ("application_name", app)],
            *n as f64,
        );
    }
    for (kind, app, n) in &total {
        s.counter(
            "sluice_leaks_total",
            &[("kind", kind), ("application_name", app)],
            *n,
        );
    }
    s.counter("sluice_abandoned_transactions_total", &[], abandoned);
    for (app, n) in shared.leaks.reclaimed_counts() {
        s.counter(
            "sluice_reclaimed_transactions_total",
            &[("application_name", app.as_str())],
            n,
        );
    }
    share_gauges(&mut s, shared);
    s.finish()
}

/// Per host of databases with a host list or target_session_attrs: `sluice_host_up{database,
/// host}` (1 when any of the database's pools last reached the host, whatever its role),
/// `sluice_host_role{database,host,role}` (1 for the role the host was last found in) and
/// `sluice_host_server_connections{database,host}` (server connections open to it, all pools).
fn host_gauges(s: &mut Scrape<'_>, shared: &Shared) {
    #[derive(Default)]
    struct Seen {
        up: bool,
        role: Option<&'static str>,
        servers: usize,
    }
    let mut hosts: BTreeMap<(String, String), Seen> = BTreeMap::new();
    for pool in shared.pools.all() {
        let infos = pool.server_infos();
        for h in pool.host_states() {
            let seen = hosts
                .entry((pool.key.database.to_string(), h.addr.to_string()))
                .or_default();
            seen.up |= !matches!(
                h.health,
                crate::pool::Health::Down { .. } | crate::pool::Health::Unchecked
            );
            if h.role != crate::pool::Role::Unknown {
                seen.role = Some(h.role.as_str());
            }
            seen.servers += infos
                .iter()
                .filter(|i| *i.addr.0 == *h.addr.host && i.addr.1 == h.addr.port)
                .count();
        }
    }
    for ((database, host), seen) in &hosts {
        let labels = [("database", database.as_str()), ("host", host.as_str())];
        s.gauge("sluice_host_up", &labels, f64::from(u8::from(seen.up)));
        s.gauge("sluice_host_server_connections", &labels, seen.servers as f64);
        if let Some(role) = seen.role {
            s.gauge("sluice_host_role", &[labels[0], labels[1], ("role", role)], 1.0);
        }
    }
}

/// LISTEN/NOTIFY in transaction pooling, per pool: channels, listening clients, whether the
/// listening connection is up, and notifications delivered and dropped.
fn listen_series(s: &mut Scrape<'_>, shared: &Shared) {
    for hub in shared.notify.figures() {
        let l = [("database", hub.database.as_str()), ("user", hub.user.as_str())];
        s.gauge("sluice_listen_channels", &l, hub.channels.len() as f64);
        s.gauge("sluice_listen_clients", &l, hub.clients as f64);
        let up = matches!(hub.state, crate::notify::ListenerState::Listening { .. });
        s.gauge("sluice_listener_up", &l, f64::from(u8::from(up)));
        s.counter("sluice_notifications_delivered_total", &l, hub.delivered);
        s.counter("sluice_notifications_dropped_total", &l, hub.dropped);
        s.counter("sluice_listener_connects_total", &l, hub.connects);
    }
}

/// The share groups of every pool. Group names are bounded per pool (MAX_SHARE_GROUPS and an
/// overflow group); application names also go through the metrics' application-name cap, and
/// groups folded together are summed.
fn share_gauges(s: &mut Scrape<'_>, shared: &Shared) {
    let apps = shared.leaks.application_names();
    let by_app = shared.config.load().pooler.pool_share_key == crate::config::ShareKey::ApplicationName;
    for pool in shared.pools.all() {
        let (groups, cap) = pool.share_groups();
        let mut folded: BTreeMap<String, [usize; 3]> = BTreeMap::new();
        for g in groups {
            let name = if by_app { apps.folded(&g.group) } else { g.group };
            let e = folded.entry(name).or_default();
            e[0] += g.active;
            e[1] += g.waiting;
            e[2] += g.idle_in_transaction;
        }
        for (group, values) in &folded {
            let l = [
                ("database", pool.key.database.as_str()),
                ("user", pool.key.user.as_str()),
                ("share_key", group.as_str()),
            ];
            let cap = cap.unwrap_or(0);
            for ((name, _), v) in SHARE_GAUGES.iter().zip([values[0], values[1], values[2], cap]) {
                s.gauge(format!("sluice_pool_share_{name}"), &l, v as f64);
            }
        }
    }
}
