//! Binding the listening sockets: the TCP listener (with SO_REUSEPORT when `so_reuseport` is on,
//! for rolling restarts) and the unix socket file (its mode and group, a stale file replaced, a
//! live one left alone unless a rolling restart takes it over).

use crate::Config;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener};

/// Connections the kernel may queue on a listener before sluice accepts them (capped by
/// net.core.somaxconn). A backlog of 128 overflows under a burst of connections, and a dropped
/// SYN costs a client a 1 s retransmission.
pub(crate) const BACKLOG: i32 = 4096;

/// Binds a TCP listener on each address of `listen_addr`, at `listen_port` (with port 0, the
/// port the first one got, so every address has the same port).
pub(crate) fn tcp(config: &Config) -> io::Result<Vec<TcpListener>> {
    let mut port = config.pooler.listen_port;
    let mut listeners = Vec::new();
    for ip in config.listen_ips() {
        let listener = tcp_at(SocketAddr::new(ip, port), config.pooler.so_reuseport)?;
        port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    if listeners.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "listen_addr names no address",
        ));
    }
    if config.pooler.so_reuseport {
        warn_without_request_migration();
    }
    Ok(listeners)
}

/// Binds a TCP listener on `addr` (the pooler's, or the metrics endpoint's), sharing the port
/// with a rolling restart's other sluice when `reuseport` is on.
pub(crate) fn tcp_at(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As tokio's own bind: a restarted sluice binds past connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `::` beside `*` (0.0.0.0) in listen_addr: each family gets its own listener.
        socket.set_only_v6(true)?;
    }
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Linux resets the connections still in a closing listener's queue unless it may hand them to
/// another listener of the port (`net.ipv4.tcp_migrate_req`, Linux 5.14+). A draining sluice
/// accepts what is queued before it closes, but a handshake can complete in between.
fn warn_without_request_migration() {
    let setting = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req");
    if setting.is_ok_and(|s| s.trim() == "0") {
        tracing::warn!(
            "so_reuseport is on but net.ipv4.tcp_migrate_req is 0: a connection that arrives just as a draining sluice closes its listener may be reset; set net.ipv4.tcp_migrate_req = 1 for rolling restarts"
        );
    }
}

/// A bound unix socket and the identity of its file (so only this file is removed at exit).
pub(crate) struct UnixSocket {
    /// The listener.
    pub listener: UnixListener,
    /// `<unix_socket_dir>/.s.PGSQL.<port>`.
    pub path: PathBuf,
    /// Device and inode of the socket file this process created.
    file_id: (u64, u64),
}

impl UnixSocket {
    /// Removes the socket file, unless another process has replaced it since (a rolling
    /// restart's new sluice).
    pub(crate) fn remove_file(path: &Path, file_id: (u64, u64)) {
        if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == file_id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// A unix listener an upgrade's new process received, with the file it listens on.
    pub(crate) fn inherited(
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
        file_id: (u64, u64),
    ) -> io::Result<UnixSocket> {
        listener.set_nonblocking(true)?;
        Ok(UnixSocket {
            listener: UnixListener::from_std(listener)?,
            path,
            file_id,
        })
    }

    /// See [`UnixSocket::remove_file`].
    pub(crate) fn file_id(&self) -> (u64, u64) {
        self.file_id
    }
}

/// Binds the unix socket for `port` in `unix_socket_dir` (None when that is empty), and gives the
/// file `unix_socket_mode` and `unix_socket_group`. A file nobody listens on is replaced; one a
/// live process listens on is an error, unless `so_reuseport` says a rolling restart takes over.
pub(crate) fn unix(config: &Config, port: u16) -> Result<Option<UnixSocket>, crate::Error> {
    let p = &config.pooler;
    let Some(dir) = p.unix_socket_dir.as_deref().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let fail = |source: io::Error| crate::Error::Bind {
        what: path.display().to_string(),
        source,
    };
    if std::fs::symlink_metadata(&path).is_ok() {
        let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
        if live && !p.so_reuseport {
            return Err(fail(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this socket (stop it, choose another unix_socket_dir, or set so_reuseport for a rolling restart)",
            )));
        }
        if live {
            tracing::info!(path = %path.display(), "taking over the unix socket (so_reuseport)");
        }
        std::fs::remove_file(&path).map_err(fail)?;
    }
    let listener = UnixListener::bind(&path).map_err(fail)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(p.unix_socket_mode)).map_err(fail)?;
    if let Some(group) = p.unix_socket_group.as_deref() {
        let gid = crate::config::group_id(group).ok_or_else(|| {
            fail(io::Error::new(
                io::ErrorKind::NotFound,
                format!("unix_socket_group {group:?} does not exist"),
            ))
        })?;
        std::os::unix::fs::chown(&path, None, Some(gid)).map_err(fail)?;
    }
    let meta = std::fs::symlink_metadata(&path).map_err(fail)?;
    Ok(Some(UnixSocket {
        listener,
        path,
        file_id: (meta.dev(), meta.ino()),
    }))
}
