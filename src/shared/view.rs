//! The observe view over this pooler's live state: the figures, statistics and leak scans of
//! `observe`, handed the parts of `Shared` they read, for the console, the exporter and the
//! timers that keep the view current.

use super::Shared;
use crate::observe::figures::{self, DatabaseFigures, PoolFigures};
use crate::observe::stats::StatsHistory;
use crate::pool::{Pool, StatsSnapshot};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

impl Shared {
    /// SHOW POOLS' figures for every pool, in the console's order.
    pub(crate) fn pool_figures(&self) -> Vec<(Arc<Pool>, PoolFigures)> {
        figures::pool_figures(&self.clients(), self.pools.all())
    }

    /// SHOW DATABASES' figures for every configured database.
    pub(crate) fn database_figures(&self) -> Vec<DatabaseFigures> {
        figures::database_figures(&self.config.load(), &self.pools.all(), &self.clients(), |db| {
            self.is_disabled(db)
        })
    }

    /// SHOW LISTS' rows: (list, items).
    pub(crate) fn list_figures(&self) -> Vec<(&'static str, usize)> {
        let config = self.config.load();
        let pools = self.pools.all();
        let used_clients = self.clients().len();
        figures::list_figures(&config, &pools, used_clients, self.logins_in_progress())
    }

    /// SHOW STATS_TOTALS' totals per database now, summed over its pools.
    pub(crate) fn stats_totals(&self) -> BTreeMap<String, StatsSnapshot> {
        StatsHistory::totals(&self.pools)
    }

    /// Takes a stats sample; after a complete period, calls `report` (the stats log line,
    /// systemd's STATUS). Returns the live `stats_period`, the time until the next sample.
    pub(crate) fn sample_stats(&self, report: fn(&Shared)) -> Duration {
        if self.stats_history.sample(&self.pools) {
            report(self);
        }
        self.config.load().pooler.stats_period
    }

    /// One leak detector pass over every logged-in client, with the live thresholds.
    pub(crate) fn scan_leaks(&self) {
        self.leaks.scan(&self.config.load().pooler, &self.clients());
    }
}
