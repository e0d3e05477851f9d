//! Accept loops for the TCP and unix-socket listeners: one task per client, a back-off when the
//! process runs out of file descriptors, and a clean stop on shutdown.

use crate::client_info::ClientPhase;
use crate::session::{self, PeerAddr};
use crate::shared::{Lifecycle, Shared, ShutdownMode};
use crate::stream::Stream;
use crate::{Config, Error};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

/// A pooler started in this process: its addresses, its shared state, and the handle to stop it.
pub struct RunningPooler {
    tcp_addr: SocketAddr,
    unix_socket: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl RunningPooler {
    /// The TCP address actually bound (useful with `listen_port = 0`).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The metrics endpoint's bound address, when `[metrics]` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Path of the unix socket file, when one is configured.
    pub fn unix_socket_path(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// The pooler's shared state (pools, config), for inspection.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Resolves when the pooler has exited (a shutdown finished draining, or was immediate).
    pub async fn exited(&self) {
        let mut rx = self.shared.lifecycle_signal();
        let _ = rx.wait_for(|l| *l == Lifecycle::Exit).await.map(|_| ());
    }

    /// Shuts down at once: stops accepting, disconnects every client, closes idle servers.
    pub async fn shutdown(self) {
        self.shared.shutdown(None);
        self.exited().await;
        self.finish().await;
    }

    /// Cleans up after the exit: listeners stopped, unix socket file removed.
    pub async fn finish(self) {
        for t in &self.accept_tasks {
            t.abort();
        }
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the listeners and starts serving clients in the current tokio runtime.
pub async fn start(config: Config) -> Result<RunningPooler, Error> {
    crate::security::check(&config)?;
    let host = match config.pooler.listen_addr.as_str() {
        "*" => "0.0.0.0",
        other => other,
    };
    let tcp = bind_tcp(host, config.pooler.listen_port)
        .await
        .map_err(|source| Error::Bind {
            what: format!("{host}:{}", config.pooler.listen_port),
            source,
        })?;
    let tcp_addr = tcp.local_addr().map_err(|source| Error::Bind {
        what: host.to_string(),
        source,
    })?;
    let unix = match &config.pooler.unix_socket_dir {
        Some(dir) if !dir.as_os_str().is_empty() => {
            let path = dir.join(format!(".s.PGSQL.{}", tcp_addr.port()));
            // A socket file left by a previous run would make bind fail.
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(|source| Error::Bind {
                what: path.display().to_string(),
                source,
            })?;
            Some((listener, path))
        }
        _ => None,
    };
    let metrics_listener = match config.metrics.as_ref().and_then(|m| m.listen_addr()) {
        Some(addr) => Some(
            bind_tcp(&addr.ip().to_string(), addr.port())
                .await
                .map_err(|source| Error::Bind {
                    what: format!("metrics endpoint {addr}"),
                    source,
                })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let shared = Shared::new(config);
    tracing::info!(%tcp_addr, unix = ?unix.as_ref().map(|u| &u.1), "sluice listening");
    crate::stats::spawn_sampler(&shared);
    crate::leaks::spawn_detector(&shared);
    crate::sweeper::spawn_idle_sweeper(&shared);
    let mut accept_tasks = vec![
        tokio::spawn(accept_loop(tcp, shared.clone())),
        tokio::spawn(drain_monitor(shared.clone())),
    ];
    if let (Some(listener), Some(metrics)) = (metrics_listener, shared.metrics.clone()) {
        tracing::info!(addr = ?metrics_addr, "metrics endpoint listening");
        accept_tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            shared.clone(),
            metrics,
        )));
    }
    let unix_socket = unix.map(|(listener, path)| {
        accept_tasks.push(tokio::spawn(accept_loop(listener, shared.clone())));
        path
    });
    Ok(RunningPooler {
        tcp_addr,
        unix_socket,
        metrics_addr,
        shared,
        accept_tasks,
    })
}

/// Pending connections the kernel may queue for accept (capped by net.core.somaxconn). The
/// standard library's 128 overflows under a burst of connections, and a dropped SYN costs a
/// client a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `host:port` (the first address the name resolves to) with
/// [`LISTEN_BACKLOG`].
async fn bind_tcp(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Something that accepts client connections (the TCP or the unix listener).
trait Accept {
    /// Waits for the next connection.
    async fn next(&self) -> std::io::Result<(Stream, PeerAddr)>;
}

impl Accept for TcpListener {
    async fn next(&self) -> std::io::Result<(Stream, PeerAddr)> {
        let (socket, addr) = self.accept().await?;
        let _ = socket.set_nodelay(true);
        Ok((Stream::Tcp(socket), PeerAddr::Tcp(addr)))
    }
}

impl Accept for UnixListener {
    async fn next(&self) -> std::io::Result<(Stream, PeerAddr)> {
        let (socket, _) = self.accept().await?;
        Ok((Stream::Unix(socket), PeerAddr::Unix))
    }
}

/// One task per client until the pooler stops accepting; accept errors back off.
async fn accept_loop(listener: impl Accept, shared: Arc<Shared>) {
    let mut life = shared.lifecycle_signal();
    let mut suspend = shared.suspend_signal();
    loop {
        let suspended = *suspend.borrow_and_update();
        // While SUSPEND is in force, new connections wait in the kernel's backlog.
        let accepted = tokio::select! {
            a = listener.next(), if !suspended => a,
            _ = suspend.changed() => continue,
            _ = stopped_accepting(&mut life) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(session::handle_client(stream, peer, shared.clone()));
            }
            Err(e) => back_off(e).await,
        }
    }
}

/// Resolves when the pooler stops accepting new clients (any shutdown).
async fn stopped_accepting(rx: &mut tokio::sync::watch::Receiver<Lifecycle>) {
    let _ = rx.wait_for(|l| *l != Lifecycle::Running).await.map(|_| ());
}

/// Watches the lifecycle: while draining, closes clients as the mode allows and decides when
/// the pooler exits; at exit, disconnects everyone and closes idle servers.
async fn drain_monitor(shared: Arc<Shared>) {
    let mut rx = shared.lifecycle_signal();
    loop {
        let life = *rx.borrow_and_update();
        match life {
            Lifecycle::Running => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            Lifecycle::Draining(mode) => {
                if mode == ShutdownMode::WaitForServers {
                    // Close every client that holds no server mid-transaction.
                    for c in shared.clients() {
                        if matches!(c.live().phase, ClientPhase::Idle | ClientPhase::Holding) {
                            c.kill("pooler is shutting down");
                        }
                    }
                }
                if shared.clients().is_empty() {
                    shared.shutdown(None);
                    continue;
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            Lifecycle::Exit => {
                for c in shared.clients() {
                    c.kill("pooler is shutting down");
                }
                for pool in shared.pools.all() {
                    pool.close_idle();
                }
                return;
            }
        }
    }
}

/// Accept errors are usually EMFILE/ENFILE: wait for descriptors to free up instead of spinning.
async fn back_off(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
