//! The Prometheus metrics of one pooler: a private `PrometheusRecorder` (never the global one,
//! so several poolers in one process each show only their own series), per-pool handles that the
//! hot path records through without locks or label allocation, and the series pgbouncer_exporter
//! would publish, refreshed from the live state at scrape time (see `scrape`).

mod http;
mod scrape;

pub use http::serve;

use crate::pool::PoolKey;
use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;

/// Histogram buckets (seconds) for checkout waits, transactions and queries.
const BUCKETS: [f64; 17] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Why a server was closed and replaced (`sluice_server_recycled_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    /// server_lifetime reached.
    Lifetime = 0,
    /// Idle longer than server_idle_timeout.
    IdleTimeout = 1,
    /// RECONNECT asked for fresh servers.
    Reconnect = 2,
    /// server_check_query failed.
    CheckFailed = 3,
    /// The idle socket was closed or out of step.
    Dead = 4,
}

const RECYCLE_REASONS: [&str; 5] = ["lifetime", "idle_timeout", "reconnect", "check_failed", "dead"];

/// The handles one pool records through: created once with the pool, so recording is an atomic
/// update with no lookup, no label allocation and no lock shared by all clients. All no-ops
/// when the pooler has no `[metrics]` endpoint.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// `sluice_checkout_wait_seconds{database,user}`.
    pub checkout_wait: Histogram,
    /// `sluice_transaction_duration_seconds{database,user}`.
    pub transaction: Histogram,
    /// `sluice_query_duration_seconds{database,user}`.
    pub query: Histogram,
    /// `sluice_server_connects_total`.
    pub connects: Counter,
    /// `sluice_server_connect_failures_total`.
    pub connect_failures: Counter,
    /// `sluice_query_wait_timeouts_total`.
    pub wait_timeouts: Counter,
    recycled: [Counter; 5],
}

impl Default for PoolMetrics {
    fn default() -> Self {
        PoolMetrics {
            checkout_wait: Histogram::noop(),
            transaction: Histogram::noop(),
            query: Histogram::noop(),
            connects: Counter::noop(),
            connect_failures: Counter::noop(),
            wait_timeouts: Counter::noop(),
            recycled: std::array::from_fn(|_| Counter::noop()),
        }
    }
}

impl PoolMetrics {
    /// Counts `n` servers closed for `reason`.
    pub fn recycled(&self, reason: Recycle, n: u64) {
        if n > 0 {
            self.recycled[reason as usize].increment(n);
        }
    }
}

static METADATA: Metadata<'static> = Metadata::new("sluice", metrics::Level::INFO, Some(module_path!()));

/// One pooler's metrics registry and what renders it.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Gauges set at the last scrape, so series that disappeared are set to 0, not left stale.
    last_gauges: Mutex<HashSet<Key>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with bucketed histograms (not summaries).
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty") // ok: BUCKETS is a non-empty constant
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder,
            handle,
            last_gauges: Mutex::new(HashSet::new()),
        };
        scrape::describe(&m);
        Arc::new(m)
    }

    /// The handles for a new pool.
    pub fn pool_metrics(&self, key: &PoolKey) -> PoolMetrics {
        let labels = || {
            vec![
                Label::new("database", key.database.clone()),
                Label::new("user", key.user.clone()),
            ]
        };
        let h = |name: &'static str| {
            self.recorder
                .register_histogram(&Key::from_parts(name, labels()), &METADATA)
        };
        let c = |name: &'static str| self.counter(name, vec![]);
        PoolMetrics {
            checkout_wait: h("sluice_checkout_wait_seconds"),
            transaction: h("sluice_transaction_duration_seconds"),
            query: h("sluice_query_duration_seconds"),
            connects: c("sluice_server_connects_total"),
            connect_failures: c("sluice_server_connect_failures_total"),
            wait_timeouts: c("sluice_query_wait_timeouts_total"),
            recycled: RECYCLE_REASONS
                .map(|r| self.counter("sluice_server_recycled_total", vec![Label::new("reason", r)])),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Drains recorded histogram samples into their buckets (also done by each render); run
    /// periodically so an unscraped endpoint does not accumulate samples.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition, with the scrape-time series refreshed from `shared`.
    pub fn render(&self, shared: &crate::shared::Shared) -> String {
        let extra = scrape::refresh(self, shared);
        let mut text = self.handle.render();
        text.push_str(&extra);
        text
    }
}
