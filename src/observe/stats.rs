//! Statistics over time: every `stats_period` the per-database totals are folded from the pools'
//! counters and turned into per-second rates and per-transaction averages, as PgBouncer's SHOW
//! STATS reports them.

use crate::pool::{PoolRegistry, StatsSnapshot};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::Instant;

/// Averages of one database over the last period.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Averages {
    /// Server assignments per second.
    pub server_assignment_count: u64,
    /// Transactions per second.
    pub xact_count: u64,
    /// Queries per second.
    pub query_count: u64,
    /// Bytes received per second.
    pub recv: u64,
    /// Bytes sent per second.
    pub sent: u64,
    /// Microseconds per transaction.
    pub xact_time: u64,
    /// Microseconds per query.
    pub query_time: u64,
    /// Microseconds of waiting per server assignment.
    pub wait_time: u64,
    /// Client Parses of named statements per second.
    pub client_parse_count: u64,
    /// Server Parses per second.
    pub server_parse_count: u64,
    /// Binds of named statements per second.
    pub bind_count: u64,
}

/// The last period's averages per database.
#[derive(Debug, Default)]
pub struct StatsHistory {
    /// When the last sample was taken, its totals per database, and the averages over all
    /// databases of the period it ended.
    last: Mutex<(Option<Instant>, BTreeMap<String, StatsSnapshot>, Averages)>,
    averages: Mutex<BTreeMap<String, Averages>>,
}

impl StatsHistory {
    /// Totals per database now, summed over its pools.
    pub fn totals(pools: &PoolRegistry) -> BTreeMap<String, StatsSnapshot> {
        let mut out: BTreeMap<String, StatsSnapshot> = BTreeMap::new();
        for pool in pools.all() {
            out.entry(pool.key.database.clone())
                .or_default()
                .add(&pool.stats.snapshot());
        }
        out
    }

    /// The averages of the last complete period for a database.
    pub fn averages(&self, database: &str) -> Averages {
        self.averages.lock().get(database).copied().unwrap_or_default()
    }

    /// The averages of the last complete period over all databases (the stats log line).
    pub fn total_averages(&self) -> Averages {
        self.last.lock().2
    }

    /// Takes a new sample and recomputes the averages against the previous one. Returns
    /// whether a complete period was measured (not on the first sample).
    pub fn sample(&self, pools: &PoolRegistry) -> bool {
        let now = Instant::now();
        let totals = Self::totals(pools);
        let mut last = self.last.lock();
        let measured = last.0.is_some();
        if let Some(prev_at) = last.0 {
            let secs = now.duration_since(prev_at).as_secs_f64().max(0.001);
            let mut avgs = BTreeMap::new();
            let (mut cur_all, mut prev_all) = (StatsSnapshot::default(), StatsSnapshot::default());
            for (db, cur) in &totals {
                let prev = last.1.get(db).copied().unwrap_or_default();
                cur_all.add(cur);
                prev_all.add(&prev);
                avgs.insert(db.clone(), Averages::between(&prev, cur, secs));
            }
            last.2 = Averages::between(&prev_all, &cur_all, secs);
            *self.averages.lock() = avgs;
        }
        last.0 = Some(now);
        last.1 = totals;
        measured
    }
}

impl Averages {
    /// Rates and averages from two snapshots `secs` apart.
    fn between(prev: &StatsSnapshot, cur: &StatsSnapshot, secs: f64) -> Averages {
        let d = |c: u64, p: u64| c.saturating_sub(p);
        let per_sec = |x: u64| (x as f64 / secs).round() as u64;
        let per = |x: u64, count: u64| x.checked_div(count).unwrap_or(0);
        let xacts = d(cur.xact_count, prev.xact_count);
        let queries = d(cur.query_count, prev.query_count);
        let assignments = d(cur.server_assignment_count, prev.server_assignment_count);
        Averages {
            server_assignment_count: per_sec(assignments),
            xact_count: per_sec(xacts),
            query_count: per_sec(queries),
            recv: per_sec(d(cur.bytes_received, prev.bytes_received)),
            sent: per_sec(d(cur.bytes_sent, prev.bytes_sent)),
            xact_time: per(d(cur.xact_time_us, prev.xact_time_us), xacts),
            query_time: per(d(cur.query_time_us, prev.query_time_us), queries),
            wait_time: per(d(cur.wait_time_us, prev.wait_time_us), assignments),
            client_parse_count: per_sec(d(cur.client_parse_count, prev.client_parse_count)),
            server_parse_count: per_sec(d(cur.server_parse_count, prev.server_parse_count)),
            bind_count: per_sec(d(cur.bind_count, prev.bind_count)),
        }
    }
}
