//! Accept loops for the TCP and unix-socket listeners: one task per client, a back-off when the
//! process runs out of file descriptors, and a clean stop on shutdown.

use crate::clients::ClientPhase;
use crate::config::RuntimeKind;
use crate::session::{self, PeerAddr};
use crate::shared::{Lifecycle, Shared, ShutdownMode};
use crate::stream::Stream;
use crate::workers::{WorkerThreads, Workers};
use crate::{Config, Error};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

/// A pooler started in this process: its addresses, its shared state, and the handle to stop it.
pub struct RunningPooler {
    tcp_addr: SocketAddr,
    tcp_addrs: Vec<SocketAddr>,
    /// The unix socket file and its (device, inode), removed at exit only if still ours.
    unix_socket: Option<(PathBuf, (u64, u64))>,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// The listening sockets an upgrade passes to the new process, and the switch that stops
    /// this process's accept loops meanwhile (`handover/`).
    pub(crate) handover: HandOverListeners,
    /// The pidfile an upgrade's new process took over from the old one (removed at exit).
    pub(crate) pidfile: Arc<std::sync::OnceLock<crate::service::pidfile::PidFile>>,
    /// The per-core runtimes the sessions run on (`runtime = "per-core"`); None: sessions run
    /// on the runtime that started the pooler.
    workers: Option<WorkerThreads>,
}

/// What an upgrade needs of the listeners: their descriptor numbers, and the accept loops'
/// pause. Numbers, not duplicates: a duplicate held for the process's life would keep a
/// listener open after a shutdown closed it (and a rolling restart's kernel would go on
/// queueing connections on it). The accept loops keep them open while the pooler runs.
pub(crate) struct HandOverListeners {
    /// TCP, one per `listen_addr` address.
    pub(crate) tcp: Vec<std::os::fd::RawFd>,
    /// The unix listener, when configured.
    pub(crate) unix: Option<std::os::fd::RawFd>,
    /// The metrics endpoint's listener, when configured.
    pub(crate) metrics: Option<std::os::fd::RawFd>,
    /// True: the accept loops do not accept (another process does).
    pub(crate) paused: tokio::sync::watch::Sender<bool>,
    /// Set once the new process owns the unix socket file: this one leaves it at exit.
    pub(crate) file_given: std::sync::atomic::AtomicBool,
}

/// Listening sockets an upgrade's new process received from the old one.
pub(crate) struct Inherited {
    /// TCP, one per `listen_addr` address, in order.
    pub(crate) tcp: Vec<std::net::TcpListener>,
    /// The unix listener, its file, and the file's (device, inode).
    pub(crate) unix: Option<(std::os::unix::net::UnixListener, PathBuf, (u64, u64))>,
    /// The metrics endpoint.
    pub(crate) metrics: Option<std::net::TcpListener>,
}

impl RunningPooler {
    /// The TCP address actually bound (useful with `listen_port = 0`); the first of
    /// `listen_addr`'s when it lists several.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Every TCP address bound, one per item of `listen_addr`.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The metrics endpoint's bound address, when `[metrics]` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Path of the unix socket file, when one is configured.
    pub fn unix_socket_path(&self) -> Option<&Path> {
        self.unix_socket.as_ref().map(|(path, _)| path.as_path())
    }

    /// The unix socket file and its (device, inode), when one is configured.
    pub(crate) fn unix_socket(&self) -> Option<(&Path, (u64, u64))> {
        self.unix_socket.as_ref().map(|(path, id)| (path.as_path(), *id))
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
        if let Some((path, file_id)) = &self.unix_socket
            && !self.handover.file_given.load(Ordering::Acquire)
        {
            crate::bind::UnixSocket::remove_file(path, *file_id);
        }
        if let Some(workers) = self.workers {
            workers.stop().await;
        }
    }
}

/// Binds the listeners and starts serving clients in the current tokio runtime.
pub async fn start(config: Config) -> Result<RunningPooler, Error> {
    start_with(config, None).await
}

/// [`start`], on listeners bound here or (an upgrade) received from the old process.
pub(crate) async fn start_with(config: Config, inherited: Option<Inherited>) -> Result<RunningPooler, Error> {
    crate::security::check(&config)?;
    let what = || format!("{}:{}", config.pooler.listen_addr, config.pooler.listen_port);
    let bind_err = |source| Error::Bind { what: what(), source };
    let (tcp, unix, metrics_listener) = match inherited {
        Some(i) => {
            let tcp = i
                .tcp
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bind_err)?;
            let unix = match i.unix {
                Some((l, path, file_id)) => {
                    Some(crate::bind::UnixSocket::inherited(l, path, file_id).map_err(bind_err)?)
                }
                None => None,
            };
            let metrics = i
                .metrics
                .map(TcpListener::from_std)
                .transpose()
                .map_err(bind_err)?;
            (tcp, unix, metrics)
        }
        None => {
            let tcp = crate::bind::tcp(&config).map_err(bind_err)?;
            let port = tcp
                .first()
                .map(|l| l.local_addr())
                .transpose()
                .map_err(bind_err)?
                .map_or(config.pooler.listen_port, |a| a.port());
            let unix = crate::bind::unix(&config, port)?;
            let metrics = match config.metrics.as_ref().and_then(|m| m.listen_addr()) {
                Some(addr) => Some(crate::bind::tcp_at(addr, config.pooler.so_reuseport).map_err(
                    |source| Error::Bind {
                        what: format!("metrics endpoint {addr}"),
                        source,
                    },
                )?),
                None => None,
            };
            (tcp, unix, metrics)
        }
    };
    let tcp_addrs = tcp
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bind_err)?;
    let tcp_addr = *tcp_addrs.first().ok_or_else(|| Error::Bind {
        what: what(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"),
    })?;
    use std::os::fd::AsRawFd;
    let (paused, _) = tokio::sync::watch::channel(false);
    let handover = HandOverListeners {
        tcp: tcp.iter().map(|l| l.as_raw_fd()).collect(),
        unix: unix.as_ref().map(|u| u.listener.as_raw_fd()),
        metrics: metrics_listener.as_ref().map(|m| m.as_raw_fd()),
        paused,
        file_given: std::sync::atomic::AtomicBool::new(false),
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let workers = match config.pooler.runtime {
        RuntimeKind::PerCore => {
            let n = match config.pooler.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            Some(WorkerThreads::start(n).map_err(Error::Workers)?)
        }
        RuntimeKind::Shared => None,
    };
    let spawner = workers.as_ref().map(|w| w.workers().clone());
    let shared = Shared::new(config);
    if let Some(spawner) = &spawner {
        // Clients adopted in an upgrade run on the workers too (session/handover.rs).
        let _ = shared.workers.set(spawner.clone());
    }
    let shown: Vec<String> = tcp_addrs.iter().map(|a| a.to_string()).collect();
    let shown = shown.join(", ");
    match &unix {
        Some(u) => tracing::info!("sluice listening on {shown} and {}", u.path.display()),
        None => tracing::info!("sluice listening on {shown}"),
    }
    crate::janitor::spawn(&shared);
    crate::service::spawn_stop_notifier(&shared);
    let logins = Arc::new(AtomicUsize::new(0));
    let sessions = Sessions {
        shared: shared.clone(),
        logins: logins.clone(),
        workers: spawner,
    };
    let mut accept_tasks = vec![tokio::spawn(drain_monitor(shared.clone(), logins.clone()))];
    for listener in tcp {
        accept_tasks.push(tokio::spawn(accept_loop(
            listener,
            sessions.clone(),
            handover.paused.subscribe(),
        )));
    }
    if let (Some(listener), Some(metrics)) = (metrics_listener, shared.metrics.clone()) {
        if let Some(addr) = metrics_addr {
            tracing::info!("metrics endpoint listening on {addr}");
        }
        accept_tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            shared.clone(),
            metrics,
        )));
    }
    let unix_socket = unix.map(|socket| {
        let file = (socket.path.clone(), socket.file_id());
        let paused = handover.paused.subscribe();
        accept_tasks.push(tokio::spawn(accept_loop(socket.listener, sessions, paused)));
        file
    });
    Ok(RunningPooler {
        tcp_addr,
        tcp_addrs,
        unix_socket,
        metrics_addr,
        shared,
        accept_tasks,
        handover,
        pidfile: Arc::default(),
        workers,
    })
}

/// Something that accepts client connections (the TCP or the unix listener).
trait Accept {
    /// Waits for the next connection.
    async fn next(&self) -> std::io::Result<(Stream, PeerAddr)>;

    /// Closes the listener after taking the connections already in its queue (at most one
    /// backlog's worth), without waiting for more.
    fn close_after_queued(self) -> Vec<(Stream, PeerAddr)>;
}

/// Connections taken from a closing listener's queue, at most (the listen backlog).
const QUEUED_AT_CLOSE: usize = crate::bind::BACKLOG as usize;

impl Accept for TcpListener {
    async fn next(&self) -> std::io::Result<(Stream, PeerAddr)> {
        let (socket, addr) = self.accept().await?;
        let _ = socket.set_nodelay(true);
        Ok((Stream::Tcp(socket), PeerAddr::Tcp(addr)))
    }

    fn close_after_queued(self) -> Vec<(Stream, PeerAddr)> {
        let Ok(listener) = self.into_std() else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        // Non-blocking: stops at the first EAGAIN, when the queue is empty.
        while taken.len() < QUEUED_AT_CLOSE
            && let Ok((socket, addr)) = listener.accept()
        {
            let socket = socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(socket));
            if let Ok(socket) = socket {
                let _ = socket.set_nodelay(true);
                taken.push((Stream::Tcp(socket), PeerAddr::Tcp(addr)));
            }
        }
        taken
    }
}

impl Accept for UnixListener {
    async fn next(&self) -> std::io::Result<(Stream, PeerAddr)> {
        let (socket, _) = self.accept().await?;
        Ok((Stream::Unix(socket), PeerAddr::Unix))
    }

    fn close_after_queued(self) -> Vec<(Stream, PeerAddr)> {
        let Ok(listener) = self.into_std() else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while taken.len() < QUEUED_AT_CLOSE
            && let Ok((socket, _)) = listener.accept()
        {
            let socket = socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(socket));
            if let Ok(socket) = socket {
                taken.push((Stream::Unix(socket), PeerAddr::Unix));
            }
        }
        taken
    }
}

/// One task per client until the pooler stops accepting; accept errors back off. At a
/// shutdown the listener closes at once (a rolling restart's new sluice gets the new
/// connections), and the connections already queued on it are served, not reset.
async fn accept_loop(
    listener: impl Accept,
    sessions: Sessions,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    let shared = &sessions.shared;
    let mut life = shared.lifecycle_signal();
    let mut suspend = shared.suspend_signal();
    let mut backoff = AcceptBackoff::default();
    loop {
        let suspended = *suspend.borrow_and_update();
        // During an upgrade the new process accepts on the same socket.
        let elsewhere = *paused.borrow_and_update();
        // While SUSPEND is in force, new connections wait in the kernel's backlog.
        let accepted = tokio::select! {
            a = listener.next(), if !suspended && !elsewhere => a,
            _ = suspend.changed() => continue,
            r = paused.changed() => match r {
                Ok(()) => continue,
                Err(_) => std::future::pending().await,
            },
            _ = stopped_accepting(&mut life) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                sessions.serve(stream, peer);
            }
            Err(e) => {
                let pause = backoff.failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped_accepting(&mut life) => break,
                }
            }
        }
    }
    if *paused.borrow() {
        // Handed over: the queue is the new process's now (the socket is shared); take nothing.
        return;
    }
    let queued = listener.close_after_queued();
    if !queued.is_empty() {
        tracing::info!(
            connections = queued.len(),
            "serving the connections queued before the listener closed"
        );
    }
    for (stream, peer) in queued {
        sessions.serve(stream, peer);
    }
}

/// Where accepted clients go: the pooler's state, the count of logins in progress, and the
/// per-core runtimes (if any) that take the sessions in turn.
#[derive(Clone)]
struct Sessions {
    shared: Arc<Shared>,
    logins: Arc<AtomicUsize>,
    workers: Option<Arc<Workers>>,
}

impl Sessions {
    /// Spawns a client's task, counted in `logins` until it has logged in (or is a console
    /// session): on the next per-core runtime, or on the current one.
    fn serve(&self, stream: Stream, peer: PeerAddr) {
        if let Stream::Tcp(socket) = &stream {
            crate::tcp_options::TcpOptions::from_config(&self.shared.config.load().pooler).apply(socket);
        }
        let guard = LoginInProgress::new(self.logins.clone());
        let shared = self.shared.clone();
        match &self.workers {
            Some(workers) => {
                // The socket is registered with the accepting runtime; the worker registers
                // it anew with its own, so that every wake-up of the session stays on its thread.
                let Some(sock) = Unregistered::take(stream) else {
                    return;
                };
                workers.spawn(async move {
                    if let Some(stream) = sock.register() {
                        session::handle_client(stream, peer, shared).await;
                    }
                    drop(guard);
                });
            }
            None => {
                tokio::spawn(async move {
                    session::handle_client(stream, peer, shared).await;
                    drop(guard);
                });
            }
        }
    }
}

/// An accepted socket on its way to a per-core runtime, registered with none.
enum Unregistered {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Unregistered {
    /// Takes the socket out of the accepting runtime (None: not a plain socket, or failed).
    fn take(stream: Stream) -> Option<Unregistered> {
        match stream {
            Stream::Tcp(s) => s.into_std().ok().map(Unregistered::Tcp),
            Stream::Unix(s) => s.into_std().ok().map(Unregistered::Unix),
            Stream::Tls(_) | Stream::Closed => None,
        }
    }

    /// Registers the socket with the calling runtime (None: the registration failed, and the
    /// connection is closed).
    fn register(self) -> Option<Stream> {
        let registered = match self {
            Unregistered::Tcp(s) => tokio::net::TcpStream::from_std(s).map(Stream::Tcp),
            Unregistered::Unix(s) => tokio::net::UnixStream::from_std(s).map(Stream::Unix),
        };
        match registered {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!("cannot register a client connection: {e}");
                None
            }
        }
    }
}

/// Counts an accepted connection whose session has not ended yet. A pooled client's login task
/// ends once it is registered (its session runs in a task of its own), so the count less the
/// open console sessions is the logins in progress, which a drain waits for.
struct LoginInProgress(Arc<AtomicUsize>);

impl LoginInProgress {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        LoginInProgress(count)
    }
}

impl Drop for LoginInProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves when the pooler stops accepting new clients (any shutdown).
async fn stopped_accepting(rx: &mut tokio::sync::watch::Receiver<Lifecycle>) {
    let _ = rx.wait_for(|l| *l != Lifecycle::Running).await.map(|_| ());
}

/// Watches the lifecycle: while draining, closes clients as the mode allows and decides when
/// the pooler exits; at exit, disconnects everyone and closes idle servers.
async fn drain_monitor(shared: Arc<Shared>, logins: Arc<AtomicUsize>) {
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
                let logging_in = logins
                    .load(Ordering::Acquire)
                    .saturating_sub(shared.console_count());
                if shared.clients().is_empty() && logging_in == 0 {
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

/// First pause after a failed accept; it doubles with each failure in a row, up to the most.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while they keep failing.
const MOST_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per this interval about failing accepts, however many there were.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Failed accepts (usually EMFILE/ENFILE: out of file descriptors) in a row: each waits longer,
/// up to [`MOST_PAUSE`], so that sluice neither spins nor floods its log; the connection waits
/// in the listen queue until a descriptor frees up.
#[derive(Default)]
struct AcceptBackoff {
    /// The pause after the next failure (zero: no failure in a row yet).
    pause: Duration,
    /// Failures not reported yet, and when the last report was.
    unreported: u64,
    reported_at: Option<std::time::Instant>,
    /// Failures since accepting last worked.
    in_a_row: u64,
}

impl AcceptBackoff {
    /// Records a failure; returns how long to wait before accepting again. Logs at most once
    /// per [`REPORT_EVERY`].
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.pause = (self.pause * 2).clamp(FIRST_PAUSE, MOST_PAUSE);
        self.unreported += 1;
        self.in_a_row += 1;
        let due = self.reported_at.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if due {
            let hint = match e.raw_os_error() {
                Some(libc::EMFILE) => " (the open files limit: raise LimitNOFILE= or ulimit -n)",
                Some(libc::ENFILE) => " (the system-wide open files limit: fs.file-max)",
                _ => "",
            };
            tracing::warn!(
                "cannot accept connections: {e}{hint}; {} failed attempt(s) since the last report, \
                 retrying every {} at most; new clients wait in the listen queue",
                self.unreported,
                crate::config::format_duration(self.pause)
            );
            self.unreported = 0;
            self.reported_at = Some(std::time::Instant::now());
        }
        self.pause
    }

    /// Accepting works (again): the next failure starts with a short pause. The report
    /// interval keeps running, so a limit that is hit on and off still logs once per interval.
    fn succeeded(&mut self) {
        if self.in_a_row > 0 {
            tracing::debug!(
                "accepting connections again after {} failed attempt(s)",
                self.in_a_row
            );
            self.pause = Duration::ZERO;
            self.in_a_row = 0;
        }
    }
}
