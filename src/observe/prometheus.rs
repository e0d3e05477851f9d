//! The Prometheus registry of one pooler: a private `PrometheusRecorder` (never the global one,
//! so several poolers in one process each show only their own series) that makes each pool's
//! instruments (`pool::PoolMetrics`, recorded on the hot path without locks or label
//! allocation) and holds the series the exporter (`metrics`, above) refreshes at scrape time.

use super::catalogue;
use crate::pool::{InstrumentSource, PoolKey, PoolMetrics, RECYCLE_REASONS};
use metrics::{Counter, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;

/// Histogram buckets (seconds) for checkout waits, transactions and queries.
const BUCKETS: [f64; 17] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The metadata every series is registered with.
pub(crate) static METADATA: Metadata<'static> =
    Metadata::new("sluice", metrics::Level::INFO, Some(module_path!()));

/// One pooler's Prometheus registry: the pools' instruments and the scrape-time series.
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
        catalogue::describe(&m.recorder);
        Arc::new(m)
    }

    /// The recorder the scrape-time series are set in.
    pub(crate) fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }

    /// The gauges set at the last scrape (the scrape zeroes those it no longer sets).
    pub(crate) fn last_gauges(&self) -> &Mutex<HashSet<Key>> {
        &self.last_gauges
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

    /// The Prometheus text exposition of the recorded series (the scrape-time ones as last set).
    pub(crate) fn render_recorded(&self) -> String {
        self.handle.render()
    }
}

impl InstrumentSource for Metrics {
    fn pool_metrics(&self, key: &PoolKey) -> PoolMetrics {
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
            recycled_by_reason: RECYCLE_REASONS
                .map(|r| self.counter("sluice_server_recycled_total", vec![Label::new("reason", r)])),
        }
    }
}
