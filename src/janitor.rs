//! The process-wide timers, in one task (PgBouncer's janitor): client_idle_timeout for every
//! idle client, server_fast_close for session clients holding an outdated server, freeing unused auto-database pools, the stats_period sample (and its log line),
//! the leak detector's scan, and the metrics' histogram upkeep. Each job is a call into the
//! module that owns the data; this file only decides when. Per-pool timers stay in each pool's
//! maintenance task (`pool/maintenance.rs`).

use crate::pool::PoolKey;
use crate::shared::Shared;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often idle clients are checked: client_idle_timeout is enforced to within this, so an
/// idle session carries no timer of its own (it waits only for its socket and kill switch).
const IDLE_SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Shortest and longest pause between two looks for unused auto-database pools (a quarter of
/// autodb_idle_timeout in between).
const AUTODB_SWEEP_MIN: Duration = Duration::from_millis(50);
const AUTODB_SWEEP_MAX: Duration = Duration::from_secs(1);
/// Shortest stats period sampled, whatever stats_period says.
const STATS_MIN_PERIOD: Duration = Duration::from_millis(100);
/// How often the leak detector looks at every client.
const LEAK_SCAN_EVERY: Duration = Duration::from_millis(500);
/// How often recorded histogram samples are folded in when nobody scrapes.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// One periodic job; a variant owns what the job keeps between runs.
enum Job {
    /// Ends clients idle (outside a transaction) longer than client_idle_timeout, and with
    /// server_fast_close the session clients holding an outdated server between transactions.
    IdleClients,
    /// Frees pools of databases served through `"*"` once unused for autodb_idle_timeout.
    AutodbPools {
        /// Since when each auto-database pool has had no client.
        idle_since: HashMap<PoolKey, Instant>,
    },
    /// Samples the counters for SHOW STATS; after a whole period, the stats line and systemd's
    /// STATUS.
    Stats,
    /// Looks for leaked connections.
    Leaks,
    /// Folds the metrics' histogram samples in (only with a metrics endpoint).
    MetricsUpkeep,
}

impl Job {
    /// The pause before the job's first run: a sweep waits one period, the others start now
    /// (the stats sample that starts the first period, the detector's first look).
    fn first_pause(&self, shared: &Shared) -> Duration {
        match self {
            Job::IdleClients => IDLE_SWEEP_EVERY,
            Job::AutodbPools { .. } => autodb_pause(shared),
            Job::Stats | Job::Leaks | Job::MetricsUpkeep => Duration::ZERO,
        }
    }

    /// Runs the job once; returns the pause until its next run (read from the live config).
    fn run(&mut self, shared: &Shared, now: Instant) -> Duration {
        match self {
            Job::IdleClients => {
                let (limit, fast_close) = {
                    let config = shared.config.load();
                    (config.pooler.client_idle_timeout, config.pooler.server_fast_close)
                };
                if !limit.is_zero() {
                    shared.for_each_client(|c| c.kill_if_idle_for(limit, now));
                }
                if fast_close {
                    for pool in shared.pools.all() {
                        pool.fast_close_outdated();
                    }
                }
                IDLE_SWEEP_EVERY
            }
            Job::AutodbPools { idle_since } => {
                free_unused_auto_pools(shared, idle_since, now);
                autodb_pause(shared)
            }
            Job::Stats => shared
                .sample_stats(crate::service::report_stats)
                .max(STATS_MIN_PERIOD),
            Job::Leaks => {
                shared.scan_leaks();
                LEAK_SCAN_EVERY
            }
            Job::MetricsUpkeep => {
                if let Some(metrics) = &shared.metrics {
                    metrics.upkeep();
                }
                METRICS_UPKEEP_EVERY
            }
        }
    }
}

/// The pause between two looks for unused auto-database pools.
fn autodb_pause(shared: &Shared) -> Duration {
    let timeout = shared.config.load().pooler.autodb_idle_timeout;
    (timeout / 4).clamp(AUTODB_SWEEP_MIN, AUTODB_SWEEP_MAX)
}

/// Frees the auto-database pools unused for autodb_idle_timeout, and logs each.
fn free_unused_auto_pools(shared: &Shared, idle_since: &mut HashMap<PoolKey, Instant>, now: Instant) {
    let config = shared.config.load_full();
    let timeout = config.pooler.autodb_idle_timeout;
    let listed = |name: &str| config.databases.contains_key(name);
    for key in shared.pools.free_idle_auto(listed, timeout, idle_since, now) {
        tracing::info!(
            database = %key.database,
            user = %key.user,
            "auto-database pool unused for autodb_idle_timeout; freed"
        );
    }
}

/// Runs every process-wide timer from one task until the pooler is gone.
pub(crate) fn spawn(shared: &Arc<Shared>) {
    let mut jobs = vec![
        Job::IdleClients,
        Job::AutodbPools {
            idle_since: HashMap::new(),
        },
        Job::Stats,
        Job::Leaks,
    ];
    if shared.metrics.is_some() {
        jobs.push(Job::MetricsUpkeep);
    }
    let start = Instant::now();
    let schedule: Vec<(Job, Instant)> = jobs
        .into_iter()
        .map(|job| {
            let due = start + job.first_pause(shared);
            (job, due)
        })
        .collect();
    tokio::spawn(run(Arc::downgrade(shared), schedule));
}

/// The janitor's loop: sleeps until the earliest job is due, runs every due job, and
/// schedules each again. Holds the pooler only while a job runs.
async fn run(weak: Weak<Shared>, mut schedule: Vec<(Job, Instant)>) {
    loop {
        let Some(next) = schedule.iter().map(|(_, due)| *due).min() else {
            return;
        };
        tokio::time::sleep_until(next.into()).await;
        let Some(shared) = weak.upgrade() else { return };
        let now = Instant::now();
        for (job, due) in schedule.iter_mut().filter(|(_, due)| *due <= now) {
            *due = Instant::now() + job.run(&shared, now);
        }
    }
}
