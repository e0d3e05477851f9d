//! The open-files limit: raised to the hard limit at start, and compared with what the
//! configuration may need (every client and every server connection is a descriptor).

use crate::config::Config;
use std::io;

/// Descriptors kept for everything that is not a client or server connection: listeners, the
/// runtime's own, the log file, the metrics endpoint, the auth and hba files being read.
const MARGIN: u64 = 32;

/// The open-files limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft limit can be raised to without privileges).
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (or, when that is unlimited, to the kernel's
/// per-process maximum).
pub fn raise() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        lim.rlim_max
    };
    if before < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = target;
    }
    Ok(FdLimit {
        before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Descriptors the configuration may need at once: `max_client_conn`, plus every pool's
/// servers (pool size and reserve, per known user unless the database forces one user, capped
/// by max_db_connections), plus a margin. Users found only through auth_query or a wildcard
/// database are not known in advance; each database counts at least one pool.
pub fn needed(config: &Config) -> (u64, u64) {
    let p = &config.pooler;
    let mut users: Vec<&String> = config.users.keys().chain(config.auth_file_users.keys()).collect();
    users.sort();
    users.dedup();
    let known_users = users.len().max(1) as u64;
    let servers: u64 = config
        .databases
        .values()
        .map(|db| {
            let pools = if db.user.is_some() { 1 } else { known_users };
            let settings = config.database_settings(db);
            let per_pool = u64::from(settings.pool_size) + u64::from(settings.reserve_pool_size);
            let cap = u64::from(settings.max_db_connections);
            let n = pools * per_pool;
            if cap > 0 { n.min(cap) } else { n }
        })
        .sum();
    let servers = match u64::from(p.max_user_connections) {
        0 => servers,
        cap => servers.min(cap * known_users),
    };
    (u64::from(p.max_client_conn) + servers + MARGIN, servers)
}

/// Raises the limit and logs the outcome; warns when it is below what the configuration needs.
pub fn raise_and_check(config: &Config) {
    let (need, servers) = needed(config);
    let soft = match raise() {
        Ok(l) if l.before < l.soft => {
            tracing::info!(
                "open files limit raised from {} to {} (the hard limit)",
                l.before,
                l.soft
            );
            l.soft
        }
        Ok(l) => {
            tracing::info!("open files limit is {} (hard limit {})", l.soft, l.hard);
            l.soft
        }
        Err(e) => {
            tracing::warn!("cannot raise the open files limit: {e}");
            return;
        }
    };
    if soft < need {
        tracing::warn!(
            "open files limit {soft} is below the {need} this configuration may need \
             (max_client_conn {} + up to {servers} server connections + {MARGIN}); clients will \
             wait in the listen queue when it runs out. Raise it with LimitNOFILE= (systemd) or \
             ulimit -n",
            config.pooler.max_client_conn
        );
    }
}
