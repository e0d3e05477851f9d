//! Accept loops for the TCP and unix-socket listeners: one task per client, a back-off when the
//! process runs out of file descriptors, and a clean stop on shutdown.

use crate::session::{self, PeerAddr};
use crate::shared::Shared;
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
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl RunningPooler {
    /// The TCP address actually bound (useful with `listen_port = 0`).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Path of the unix socket file, when one is configured.
    pub fn unix_socket_path(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// The pooler's shared state (pools, config), for inspection.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, tells idle clients the pooler is going away, and closes idle servers.
    /// Clients in a transaction finish it first.
    pub async fn shutdown(self) {
        self.shared.begin_shutdown();
        for t in &self.accept_tasks {
            t.abort();
        }
        for pool in self.shared.pools.all() {
            pool.close_idle();
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
    let tcp = TcpListener::bind((host, config.pooler.listen_port))
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
    let shared = Shared::new(config);
    tracing::info!(%tcp_addr, unix = ?unix.as_ref().map(|u| &u.1), "sluice listening");
    let mut accept_tasks = vec![tokio::spawn(accept_tcp(tcp, shared.clone()))];
    let unix_socket = unix.map(|(listener, path)| {
        accept_tasks.push(tokio::spawn(accept_unix(listener, shared.clone())));
        path
    });
    Ok(RunningPooler {
        tcp_addr,
        unix_socket,
        shared,
        accept_tasks,
    })
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((socket, addr)) => {
                let _ = socket.set_nodelay(true);
                tokio::spawn(session::handle_client(
                    Stream::Tcp(socket),
                    PeerAddr::Tcp(addr),
                    shared.clone(),
                ));
            }
            Err(e) => back_off(e).await,
        }
    }
}

async fn accept_unix(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                tokio::spawn(session::handle_client(
                    Stream::Unix(socket),
                    PeerAddr::Unix,
                    shared.clone(),
                ));
            }
            Err(e) => back_off(e).await,
        }
    }
}

/// Accept errors are usually EMFILE/ENFILE: wait for descriptors to free up instead of spinning.
async fn back_off(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
