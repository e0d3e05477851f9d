//! What running as a system service takes beyond pooling: systemd notifications, the pidfile,
//! the open-files limit, refusing root, reloads that also reopen the log file, and the periodic
//! stats line.

pub mod fdlimit;
pub mod notify;
pub mod pidfile;

use crate::shared::{Lifecycle, Shared};
use std::sync::Arc;

/// True when the process runs with root's effective user id (refused unless `--allow-root`).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Reloads as SIGHUP and the console's RELOAD do: tells systemd, reopens the log file (for
/// logrotate, even when the new configuration turns out invalid), re-reads the configuration,
/// and tells systemd it is ready again.
pub fn reload(shared: &Shared) -> Result<(), crate::config::ConfigError> {
    notify::reloading();
    if let Some(file) = shared.log_file.get()
        && let Err(e) = file.reopen()
    {
        tracing::error!(
            "cannot reopen logfile {}: {e}; still writing to the old file",
            file.path().display()
        );
    }
    let result = shared.reload();
    notify::ready(&status_line(shared));
    result
}

/// After each stats_period: the stats line (PgBouncer's `log_stats`) and systemd's STATUS.
pub fn report_stats(shared: &Shared) {
    let a = shared.stats_history.total_averages();
    if shared.config.load().pooler.log_stats {
        tracing::info!(
            "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, \
             in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
            a.xact_count,
            a.query_count,
            a.client_parse_count,
            a.server_parse_count,
            a.bind_count,
            a.recv,
            a.sent,
            a.xact_time,
            a.query_time,
            a.wait_time
        );
    }
    notify::status(&status_line(shared));
}

/// The one-line status: clients, servers, and the last period's rates.
pub fn status_line(shared: &Shared) -> String {
    let servers: usize = shared.pools.all().iter().map(|p| p.server_count()).sum();
    let a = shared.stats_history.total_averages();
    format!(
        "clients: {}, servers: {servers}, {} xacts/s, {} queries/s",
        shared.client_count(),
        a.xact_count,
        a.query_count
    )
}

/// Tells systemd STOPPING=1 as soon as a shutdown begins (signal or console SHUTDOWN).
pub fn spawn_stop_notifier(shared: &Arc<Shared>) {
    let mut rx = shared.lifecycle_signal();
    tokio::spawn(async move {
        if rx.wait_for(|l| *l != Lifecycle::Running).await.is_ok() {
            notify::stopping();
        }
    });
}
