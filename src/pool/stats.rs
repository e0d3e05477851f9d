//! A pool's counters for SHOW STATS and the metrics: transactions, queries, bytes and times.
//! Sessions add to them once per request or transaction (never per message), with relaxed
//! atomics; readers fold them into snapshots, and a periodic task turns snapshots into averages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Cumulative counters of one pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    xact_count: AtomicU64,
    query_count: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    xact_time_us: AtomicU64,
    query_time_us: AtomicU64,
    wait_time_us: AtomicU64,
    server_assignment_count: AtomicU64,
    client_parse_count: AtomicU64,
    server_parse_count: AtomicU64,
    bind_count: AtomicU64,
    /// The pool's Prometheus handles (histograms and event counters; no-ops without `[metrics]`).
    pub metrics: super::PoolMetrics,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Transactions completed (ReadyForQuery `I` after a request).
    pub xact_count: u64,
    /// Requests completed (each answered by a ReadyForQuery).
    pub query_count: u64,
    /// Bytes received from clients.
    pub bytes_received: u64,
    /// Bytes sent to clients.
    pub bytes_sent: u64,
    /// Microseconds spent in transactions.
    pub xact_time_us: u64,
    /// Microseconds spent in requests.
    pub query_time_us: u64,
    /// Microseconds clients spent waiting for a server.
    pub wait_time_us: u64,
    /// Times a server was lent to a client.
    pub server_assignment_count: u64,
    /// Named statements prepared by clients.
    pub client_parse_count: u64,
    /// Statements prepared on servers by sluice.
    pub server_parse_count: u64,
    /// Binds of named statements.
    pub bind_count: u64,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PoolStats {
    /// Counters starting at zero that also record into `metrics`.
    pub fn with_metrics(metrics: super::PoolMetrics) -> PoolStats {
        PoolStats {
            metrics,
            ..Default::default()
        }
    }

    /// A request was answered after `took`.
    pub fn record_query(&self, took: Duration) {
        self.query_count.fetch_add(1, Ordering::Relaxed);
        self.query_time_us.fetch_add(us(took), Ordering::Relaxed);
        self.metrics.query.record(took.as_secs_f64());
    }

    /// A transaction ended after `took`, having moved these bytes.
    pub fn record_xact(&self, took: Duration, received: u64, sent: u64) {
        self.xact_count.fetch_add(1, Ordering::Relaxed);
        self.xact_time_us.fetch_add(us(took), Ordering::Relaxed);
        self.bytes_received.fetch_add(received, Ordering::Relaxed);
        self.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.metrics.transaction.record(took.as_secs_f64());
    }

    /// A client got a server after waiting `waited`.
    pub fn record_assignment(&self, waited: Duration) {
        self.server_assignment_count.fetch_add(1, Ordering::Relaxed);
        self.wait_time_us.fetch_add(us(waited), Ordering::Relaxed);
        self.metrics.checkout_wait.record(waited.as_secs_f64());
    }

    /// A client prepared a named statement.
    pub fn record_client_parse(&self) {
        self.client_parse_count.fetch_add(1, Ordering::Relaxed);
    }

    /// sluice prepared a statement on a server.
    pub fn record_server_parse(&self) {
        self.server_parse_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A client bound a named statement.
    pub fn record_bind(&self) {
        self.bind_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            xact_count: l(&self.xact_count),
            query_count: l(&self.query_count),
            bytes_received: l(&self.bytes_received),
            bytes_sent: l(&self.bytes_sent),
            xact_time_us: l(&self.xact_time_us),
            query_time_us: l(&self.query_time_us),
            wait_time_us: l(&self.wait_time_us),
            server_assignment_count: l(&self.server_assignment_count),
            client_parse_count: l(&self.client_parse_count),
            server_parse_count: l(&self.server_parse_count),
            bind_count: l(&self.bind_count),
        }
    }
}

impl StatsSnapshot {
    /// Counter-wise sum (for per-database totals).
    pub fn add(&mut self, o: &StatsSnapshot) {
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.xact_time_us += o.xact_time_us;
        self.query_time_us += o.query_time_us;
        self.wait_time_us += o.wait_time_us;
        self.server_assignment_count += o.server_assignment_count;
        self.client_parse_count += o.client_parse_count;
        self.server_parse_count += o.server_parse_count;
        self.bind_count += o.bind_count;
    }
}
