//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: per-database totals since start and
//! averages over the last stats_period (times in microseconds, rates per second).

use super::result::{ResultSet, n, oid, t};
use crate::observe::stats::Averages;
use crate::pool::StatsSnapshot;
use crate::shared::Shared;

const S: u32 = oid::TEXT;
const N: u32 = oid::NUMERIC;

/// Counter names shared by STATS_TOTALS and STATS_AVERAGES, in PgBouncer's order.
const COUNTERS: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

fn total_values(s: &StatsSnapshot) -> [u64; 11] {
    [
        s.server_assignment_count,
        s.xact_count,
        s.query_count,
        s.bytes_received,
        s.bytes_sent,
        s.xact_time_us,
        s.query_time_us,
        s.wait_time_us,
        s.client_parse_count,
        s.server_parse_count,
        s.bind_count,
    ]
}

fn average_values(a: &Averages) -> [u64; 11] {
    [
        a.server_assignment_count,
        a.xact_count,
        a.query_count,
        a.recv,
        a.sent,
        a.xact_time,
        a.query_time,
        a.wait_time,
        a.client_parse_count,
        a.server_parse_count,
        a.bind_count,
    ]
}

/// SHOW STATS: totals then averages per database.
pub(super) fn stats(shared: &Shared) -> ResultSet {
    let mut columns: Vec<(&'static str, u32)> = vec![("database", S)];
    columns.extend([
        ("total_server_assignment_count", N),
        ("total_xact_count", N),
        ("total_query_count", N),
        ("total_received", N),
        ("total_sent", N),
        ("total_xact_time", N),
        ("total_query_time", N),
        ("total_wait_time", N),
        ("total_client_parse_count", N),
        ("total_server_parse_count", N),
        ("total_bind_count", N),
        ("avg_server_assignment_count", N),
        ("avg_xact_count", N),
        ("avg_query_count", N),
        ("avg_recv", N),
        ("avg_sent", N),
        ("avg_xact_time", N),
        ("avg_query_time", N),
        ("avg_wait_time", N),
        ("avg_client_parse_count", N),
        ("avg_server_parse_count", N),
        ("avg_bind_count", N),
        // sluice's additions, after PgBouncer's columns: the pre-1.8 name that older exporters
        // (Debian's prometheus-pgbouncer-exporter 1.7) still read.
        ("total_requests", N),
    ]);
    let mut rs = ResultSet::new(&columns);
    for (db, totals) in shared.stats_totals() {
        let avg = shared.stats_history.averages(&db);
        let mut row = vec![t(db)];
        row.extend(total_values(&totals).iter().map(n));
        row.extend(average_values(&avg).iter().map(n));
        row.push(n(totals.query_count));
        rs.push(row);
    }
    rs
}

/// SHOW STATS_TOTALS.
pub(super) fn stats_totals(shared: &Shared) -> ResultSet {
    let mut rs = per_database_columns();
    for (db, totals) in shared.stats_totals() {
        let mut row = vec![t(db)];
        row.extend(total_values(&totals).iter().map(n));
        rs.push(row);
    }
    rs
}

/// SHOW STATS_AVERAGES (PgBouncer prefixes only the last three with `avg_`).
pub(super) fn stats_averages(shared: &Shared) -> ResultSet {
    let mut columns: Vec<(&'static str, u32)> = vec![("database", S)];
    columns.extend(COUNTERS[..8].iter().map(|c| (*c, N)));
    columns.extend([
        ("avg_client_parse_count", N),
        ("avg_server_parse_count", N),
        ("avg_bind_count", N),
    ]);
    let mut rs = ResultSet::new(&columns);
    for db in shared.stats_totals().keys() {
        let mut row = vec![t(db)];
        row.extend(average_values(&shared.stats_history.averages(db)).iter().map(n));
        rs.push(row);
    }
    rs
}

fn per_database_columns() -> ResultSet {
    let mut columns: Vec<(&'static str, u32)> = vec![("database", S)];
    columns.extend(COUNTERS.iter().map(|c| (*c, N)));
    ResultSet::new(&columns)
}

/// SHOW TOTALS: the same figures summed over all databases, one row per figure.
pub(super) fn totals(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[("name", S), ("value", N)]);
    let mut sum = StatsSnapshot::default();
    let mut avg = [0u64; 11];
    for (db, s) in shared.stats_totals() {
        sum.add(&s);
        for (a, v) in avg
            .iter_mut()
            .zip(average_values(&shared.stats_history.averages(&db)))
        {
            *a += v;
        }
    }
    let total_names = [
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_client_bytes",
        "total_server_bytes",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_ps_client_parse_count",
        "total_ps_server_parse_count",
        "total_ps_bind_count",
    ];
    for (name, v) in total_names.iter().zip(total_values(&sum)) {
        rs.push(vec![t(*name), n(v)]);
    }
    let avg_names = [
        "avg_server_assignment_count",
        "avg_xact_count",
        "avg_query_count",
        "avg_client_bytes",
        "avg_server_bytes",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_ps_client_parse_count",
        "avg_ps_server_parse_count",
        "avg_ps_bind_count",
    ];
    for (name, v) in avg_names.iter().zip(avg) {
        rs.push(vec![t(*name), n(v)]);
    }
    rs
}
