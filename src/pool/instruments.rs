//! The instruments a pool records its events into (histograms of waits, transactions and
//! queries; counters of connects, failures, timeouts and recycled servers), as handles of the
//! `metrics` facade. The exporter's registry (observe, above) makes them through
//! [`InstrumentSource`]; without `[metrics]` they are no-ops. Recording is an atomic update on
//! a handle made with the pool: no lookup, no label allocation, no lock shared by all clients.

use super::PoolKey;
use metrics::{Counter, Histogram};

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

/// The `reason` label of each [`Recycle`], in its discriminant's order.
pub(crate) const RECYCLE_REASONS: [&str; 5] =
    ["lifetime", "idle_timeout", "reconnect", "check_failed", "dead"];

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
    /// `sluice_server_recycled_total{reason}`, indexed by [`Recycle`].
    pub recycled_by_reason: [Counter; 5],
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
            recycled_by_reason: std::array::from_fn(|_| Counter::noop()),
        }
    }
}

impl PoolMetrics {
    /// Counts `n` servers closed for `reason`.
    pub fn recycled(&self, reason: Recycle, n: u64) {
        if n > 0 {
            self.recycled_by_reason[reason as usize].increment(n);
        }
    }
}

/// Makes the instruments of a new pool. Implemented by the exporter's registry, so pools record
/// into it without importing it (it sits above them). Called once per pool, never per message.
pub trait InstrumentSource: Send + Sync {
    /// The handles for the pool of `key`.
    fn pool_metrics(&self, key: &PoolKey) -> PoolMetrics;
}
