//! TCP keepalive and TCP_USER_TIMEOUT (PgBouncer's `tcp_keepalive`, `tcp_keepcnt`,
//! `tcp_keepidle`, `tcp_keepintvl`, `tcp_user_timeout`), applied with socket2 to every client
//! socket sluice accepts and every server socket it opens, so a peer that vanished without a
//! FIN or RST is noticed.

use crate::config::PoolerConfig;
use std::time::Duration;

/// The options for new TCP sockets, read from the config when the socket is made (so a RELOAD
/// applies to the next ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TcpOptions {
    /// SO_KEEPALIVE.
    keepalive: bool,
    /// TCP_KEEPCNT (0: the OS default).
    count: u32,
    /// TCP_KEEPIDLE (0: the OS default).
    idle: Duration,
    /// TCP_KEEPINTVL (0: the OS default).
    interval: Duration,
    /// TCP_USER_TIMEOUT (0: the OS default).
    user_timeout: Duration,
}

impl TcpOptions {
    /// The `[pooler]` keys.
    pub(crate) fn from_config(p: &PoolerConfig) -> Self {
        TcpOptions {
            keepalive: p.tcp_keepalive,
            count: p.tcp_keepcnt,
            idle: p.tcp_keepidle,
            interval: p.tcp_keepintvl,
            user_timeout: p.tcp_user_timeout,
        }
    }

    /// Sets the options on a connected socket. A failure is logged, not fatal: the connection
    /// works without them.
    pub(crate) fn apply(&self, socket: &tokio::net::TcpStream) {
        if let Err(e) = self.try_apply(socket) {
            tracing::warn!(error = %e, "could not set TCP keepalive options on a socket");
        }
    }

    fn try_apply(&self, socket: &tokio::net::TcpStream) -> std::io::Result<()> {
        let sock = socket2::SockRef::from(socket);
        if self.keepalive {
            let mut ka = socket2::TcpKeepalive::new();
            if !self.idle.is_zero() {
                ka = ka.with_time(self.idle);
            }
            if !self.interval.is_zero() {
                ka = ka.with_interval(self.interval);
            }
            if self.count > 0 {
                ka = ka.with_retries(self.count);
            }
            sock.set_tcp_keepalive(&ka)?;
            sock.set_keepalive(true)?;
        } else {
            sock.set_keepalive(false)?;
        }
        if !self.user_timeout.is_zero() {
            sock.set_tcp_user_timeout(Some(self.user_timeout))?;
        }
        Ok(())
    }
}
