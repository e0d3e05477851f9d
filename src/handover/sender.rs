//! The old process's side of an upgrade: start the new binary, agree on the format, pass the
//! listeners, stop accepting once the new process accepts, hand each client over as soon as
//! it is idle and its pool's idle servers once its clients are going (`servers`), and exit
//! once none is left (or upgrade_timeout ended the rest). If anything fails before that, the
//! new process is stopped and this one keeps serving everything it has.

use super::servers::{self, PendingServers};
use super::{CHANNEL_FD_VAR, COMMAND_LINE, TEST_HOOK_PREFIX};
use crate::clients::Kill;
use crate::listener::RunningPooler;
use crate::shared::Shared;
use crate::shared::{Lifecycle, ShutdownMode};
use crate::upgrade::Outgoing;
use crate::upgrade::channel::{self, Reader, Writer};
use crate::upgrade::format::{
    LISTEN_SINCE, Message, OLDEST_VERSION, SERVERS_SINCE, SHUTDOWN_SINCE, ShutdownState, VERSION,
};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the new process has to start and answer each step before the hand-over of the
/// listeners (it loads its configuration and may read TLS files).
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// How long the new process has to answer for a client handed to it.
const CLIENT_LIMIT: Duration = Duration::from_secs(10);
/// After upgrade_timeout, how long the clients told to leave have to go.
const LEAVE_LIMIT: Duration = Duration::from_secs(5);
/// After a failure, how long the answers left in the channel may take to read (they are there
/// already, or the dead process's end closed).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// One upgrade at a time: set while this process hands over, or (`receiver`) is still being
/// handed to.
pub(super) static RUNNING: AtomicBool = AtomicBool::new(false);
/// Test hooks go to the first new process only.
static HOOKS_PASSED: AtomicBool = AtomicBool::new(false);

/// Clients sent and not yet answered for, with their ids: their sessions wait on these.
type Pending = HashMap<u64, (oneshot::Sender<Result<(), String>>, Instant, u64)>;

/// Runs an upgrade (SIGUSR2): hands this pooler's listeners and clients to a new process
/// started from the same binary path and arguments. Ok: everything was handed over (or ended
/// at upgrade_timeout) and the pooler is exiting. Err: the upgrade did not happen (or stopped
/// part-way) and this process serves on, with every client it still has.
pub async fn hand_over(pooler: &RunningPooler) -> Result<(), String> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        tracing::warn!("upgrade refused: one is already running (or this process is still being handed to)");
        return Err("an upgrade is already running".to_string());
    }
    let shared = pooler.shared().clone();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let mut child = spawn(theirs)?;
    tracing::info!(pid = child.id(), "upgrade: started the new process");
    let version = speaks();
    let mut handing = Handing::new(version);
    let mut channel = channel::open(ours, version, version..=version);
    let result = match &mut channel {
        Ok((reader, writer)) => drive(pooler, reader, writer, &mut handing).await,
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &result {
        // The new process must be gone before this one takes anything back: a socket is
        // served by one process at a time.
        let _ = child.start_kill();
        let _ = tokio::time::timeout(STEP_LIMIT, child.wait()).await;
        // What it answered before it died counts, read or not: a failed send ends `drive`
        // with answers still unread in the channel.
        if let Ok((reader, _)) = &mut channel {
            handing.settle_last_answers(reader).await;
        }
        pooler.handover.paused.send_replace(false);
        shared.handover.close();
        let Handing {
            pending,
            servers: sent_servers,
            handed,
            moved,
            ..
        } = handing;
        drop(pending); // their sessions take their clients back
        for (_, (server, _)) in sent_servers {
            server.keep(); // back to its pool, cleaned
        }
        shared.for_each_client(|c| c.withdraw_hand_over());
        tracing::error!(
            clients_lost = handed,
            servers_lost = moved,
            "upgrade failed, this process serves on: {e}"
        );
        RUNNING.store(false, Ordering::Release);
    }
    result
}

/// Starts the binary with the channel's other end as its descriptor `CHANNEL_FD_VAR`.
fn spawn(theirs: std::os::unix::net::UnixStream) -> Result<tokio::process::Child, String> {
    let (exe, args) = COMMAND_LINE
        .get()
        .cloned()
        .ok_or("the command line was not recorded")?;
    let fd = theirs.into_raw_fd();
    // SAFETY: fcntl on a descriptor we own; clearing FD_CLOEXEC lets the child inherit it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(&args)
        .env(CHANNEL_FD_VAR, fd.to_string())
        .stdin(std::process::Stdio::null());
    let pass_hooks = std::env::var_os(CHANNEL_FD_VAR).is_none() && !HOOKS_PASSED.swap(true, Ordering::AcqRel);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(TEST_HOOK_PREFIX) && !pass_hooks {
            cmd.env_remove(name);
        }
    }
    let child = cmd.spawn();
    // SAFETY: our copy of the descriptor; the child has its own.
    unsafe { libc::close(fd) };
    child.map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

/// The format version this process speaks as the old one: its own, unless the test hook
/// `SLUICE_UPGRADE_TEST_OLD_VERSION=1` makes the first process (not one an upgrade started)
/// speak an older one (docs/upgrades.md, "Testing").
fn speaks() -> u32 {
    if std::env::var_os(CHANNEL_FD_VAR).is_some() {
        return VERSION;
    }
    std::env::var(format!("{TEST_HOOK_PREFIX}OLD_VERSION"))
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| (OLDEST_VERSION..VERSION).contains(v))
        .unwrap_or(VERSION)
}

/// What the old process has handed over so far, and what awaits an answer.
struct Handing {
    /// The format version spoken (servers move from [`SERVERS_SINCE`] on).
    version: u32,
    /// Clients sent and not yet answered for.
    pending: Pending,
    /// Servers sent and not yet answered for.
    servers: PendingServers,
    /// Clients asked to hand themselves over.
    asked: HashSet<u64>,
    /// The last `seq` given (clients and servers share the numbering).
    seq: u64,
    /// Clients adopted.
    handed: u64,
    /// Servers adopted.
    moved: u64,
}

impl Handing {
    /// Nothing handed over yet, in format `version`.
    fn new(version: u32) -> Handing {
        Handing {
            version,
            pending: Pending::new(),
            servers: PendingServers::new(),
            asked: HashSet::new(),
            seq: 0,
            handed: 0,
            moved: 0,
        }
    }

    /// The hand-over failed and the new process is gone: settles the answers it sent before
    /// it died that are still in the channel. A client it adopted is lost with it (it may have
    /// served the client meanwhile), as is a server; only the ones it never answered for come
    /// back. Bounded by [`DRAIN_LIMIT`]; the channel ends at the last answer.
    async fn settle_last_answers(&mut self, reader: &mut Reader) {
        let until = tokio::time::Instant::now() + DRAIN_LIMIT;
        while !(self.pending.is_empty() && self.servers.is_empty()) {
            match tokio::time::timeout_at(until, reader.recv()).await {
                Ok(Ok((Message::Adopted { seq }, _))) => self.answered(seq, None),
                Ok(Ok((Message::NotAdopted { seq, reason }, _))) => self.answered(seq, Some(reason)),
                Ok(Ok(_)) => {} // a cancel request or a refusal: nobody is left to act on it
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }

    /// Sends the idle servers that may move now (`all`: every one, at the end) with their
    /// sockets; each awaits its answer in `servers`.
    async fn send_servers(&mut self, writer: &Writer, all: bool, shared: &Arc<Shared>) -> Result<(), String> {
        if self.version < SERVERS_SINCE {
            return Ok(());
        }
        let on_their_way: HashSet<u64> = self.pending.values().map(|(_, _, id)| *id).collect();
        for server in servers::movable(shared, all, &on_their_way) {
            self.seq += 1;
            let seq = self.seq;
            let message = Message::Server {
                seq,
                state: Box::new(server.state()),
            };
            let sent = send(writer, &message, &[server.raw_fd()]).await;
            // Pending even when the send failed: the descriptor may have arrived.
            self.servers.insert(seq, (server, Instant::now()));
            sent.map_err(|e| format!("cannot send a server: {e}"))?;
        }
        Ok(())
    }

    /// Settles the answer for `seq` (a client's or a server's); `why` when not adopted.
    fn answered(&mut self, seq: u64, why: Option<String>) {
        if let Some((reply, _, _)) = self.pending.remove(&seq) {
            match why {
                None => {
                    self.handed += 1;
                    let _ = reply.send(Ok(()));
                }
                Some(reason) => {
                    tracing::warn!("upgrade: the new process did not take a client: {reason}; it stays here");
                    let _ = reply.send(Err(reason));
                }
            }
        } else if let Some((server, _)) = self.servers.remove(&seq) {
            match why {
                None => self.moved += 1,
                Some(reason) => {
                    tracing::info!("upgrade: the new process closed a server it did not take: {reason}")
                }
            }
            server.gone();
        }
    }

    /// True when the new process has kept an answer waiting too long.
    fn overdue(&self) -> bool {
        self.pending
            .values()
            .any(|(_, at, _)| at.elapsed() > CLIENT_LIMIT)
            || self.servers.values().any(|(_, at)| at.elapsed() > CLIENT_LIMIT)
    }
}

/// The steps, up to Bye. Clients and servers answered for are settled as answers come.
async fn drive(
    pooler: &RunningPooler,
    reader: &mut Reader,
    writer: &Writer,
    h: &mut Handing,
) -> Result<(), String> {
    let shared = pooler.shared();
    let io = |e: std::io::Error| e.to_string();
    writer
        .send(
            &Message::Hello {
                pid: std::process::id(),
            },
            &[],
        )
        .await
        .map_err(io)?;
    match step(reader).await {
        Ok(Message::Hello { pid }) => {
            tracing::info!(pid, "upgrade: the new process speaks format {}", h.version)
        }
        Ok(Message::Refused { reason }) => return Err(format!("the new process refused: {reason}")),
        Ok(other) => return Err(format!("unexpected {other:?}")),
        Err(e) => return Err(writer.refuse(e.to_string()).await),
    }
    let l = &pooler.handover;
    // The accept loops hold these open while the pooler runs (checked here: a shutdown closes
    // them); SCM_RIGHTS sends the new process its own duplicates.
    if shared.lifecycle() != crate::shared::Lifecycle::Running {
        return Err("the pooler is shutting down".to_string());
    }
    let mut fds = l.tcp.clone();
    fds.extend(l.unix);
    fds.extend(l.metrics);
    let unix = pooler.unix_socket().map(|(p, id)| (p.to_path_buf(), id));
    let listeners = Message::Listeners {
        tcp: l.tcp.len(),
        unix,
        metrics: l.metrics.is_some(),
    };
    writer.send(&listeners, &fds).await.map_err(io)?;
    match step(reader).await.map_err(io)? {
        Message::Accepting => {}
        Message::Refused { reason } => return Err(format!("the new process refused: {reason}")),
        other => return Err(format!("unexpected {other:?}")),
    }
    // Both accept now; from here only the new process does.
    l.paused.send_replace(true);
    let mut outbox = shared.handover.open();
    let timeout = shared.config.load().pooler.upgrade_timeout;
    tracing::info!(
        clients = shared.clients.client_count(),
        "upgrade: the new process accepts; handing over each client once it is idle (upgrade_timeout {})",
        crate::config::format_duration(timeout)
    );
    let started = Instant::now();
    let mut forwarding = Forwarding::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut told_at: Option<Instant> = None;
    // A stop ordered here during the hand-over is the service's stop: the new process, which
    // serves the clients moved so far (and accepts), is told to stop the same way.
    let mut lifecycle = shared.lifecycle_signal();
    let mut passed_on = Lifecycle::Running;
    loop {
        tokio::select! {
            changed = lifecycle.changed() => {
                let now = *lifecycle.borrow_and_update();
                // A format-1 new process would not know the message (it stops when this one
                // exits and closes the channel).
                if changed.is_ok() && now != passed_on && h.version >= SHUTDOWN_SINCE {
                    passed_on = now;
                    let mode = shutdown_state(now);
                    tracing::info!(?mode, "upgrade: this process is stopping; the new process stops too");
                    send(writer, &Message::Shutdown { mode }, &[]).await?;
                }
            }
            parcel = outbox.recv() => match parcel {
                Some(Outgoing::Client { state, reply, .. }) if state.listen.is_some() && h.version < LISTEN_SINCE => {
                    // A format-1 new process would not take its notifications: it stays here.
                    let _ = reply.send(Err(format!("format {} does not move LISTENing clients", h.version)));
                }
                Some(Outgoing::Client { id, state, socket, reply }) => {
                    h.seq += 1;
                    let seq = h.seq;
                    let sent = send(writer, &Message::Client { seq, state }, &[socket.as_raw_fd()]).await;
                    drop(socket); // our extra copy; the session keeps its own until answered
                    // Pending even when the send failed: part of it (the descriptor) may have
                    // arrived, so the session takes its client back only once the new process
                    // is gone.
                    h.pending.insert(seq, (reply, Instant::now(), id));
                    if let Err(e) = sent {
                        return Err(format!("cannot send a client: {e}"));
                    }
                }
                Some(Outgoing::Cancel(key)) => {
                    send(writer, &Message::Cancel(key), &[]).await?;
                }
                Some(Outgoing::Forward { marker, what }) => {
                    send(writer, &forwarding.frame(marker, what), &[]).await?;
                }
                None => return Err("the outbox closed".to_string()),
            },
            got = reader.recv() => answer(shared, h, got.map_err(io)?.0)?,
            _ = tick.tick() => {
                if h.overdue() {
                    return Err("the new process did not answer for a client or a server in time".to_string());
                }
                ask_new_clients(shared, &mut h.asked);
                h.send_servers(writer, false, shared).await?;
                let mut left = shared.logins_in_progress();
                shared.for_each_client(|_| left += 1);
                if left == 0 && h.pending.is_empty() {
                    break;
                }
                match told_at {
                    None if started.elapsed() >= timeout => {
                        told_at = Some(Instant::now());
                        tell_the_rest(shared, timeout);
                    }
                    Some(at) if at.elapsed() >= LEAVE_LIMIT && h.pending.is_empty() => break,
                    _ => {}
                }
            }
        }
    }
    // Every idle server left goes now; Done once each is answered for.
    h.send_servers(writer, true, shared).await?;
    while !h.servers.is_empty() {
        match tokio::time::timeout(CLIENT_LIMIT, reader.recv()).await {
            Ok(got) => answer(shared, h, got.map_err(io)?.0)?,
            Err(_) => return Err("the new process did not answer for a server in time".to_string()),
        }
    }
    // What forwarding sessions put in the outbox before they ended goes before Done.
    while let Ok(parcel) = outbox.try_recv() {
        if let Outgoing::Forward { marker, what } = parcel {
            send(writer, &forwarding.frame(marker, what), &[]).await?;
        }
    }
    send(writer, &Message::Done, &[]).await?;
    // The new process tells systemd it is the main process now, then says Bye.
    match tokio::time::timeout(STEP_LIMIT, reader.recv()).await {
        Ok(Ok((Message::Bye, _))) => {}
        other => tracing::warn!("upgrade: no Bye from the new process ({other:?}); exiting anyway"),
    }
    pooler.handover.file_given.store(true, Ordering::Release);
    shared.handover.close();
    tracing::info!(
        handed_over = h.handed,
        servers = h.moved,
        listening_moved = forwarding.seen,
        notifications_forwarded = forwarding.messages,
        markers_missed = forwarding.missed,
        seconds = started.elapsed().as_secs_f64(),
        "upgrade: done; this process exits"
    );
    shared.shutdown(None);
    Ok(())
}

/// What the new process is told when this one leaves `Running` during a hand-over.
fn shutdown_state(lifecycle: Lifecycle) -> ShutdownState {
    match lifecycle {
        Lifecycle::Draining(ShutdownMode::WaitForClients) => ShutdownState::WaitForClients,
        Lifecycle::Draining(ShutdownMode::WaitForServers) => ShutdownState::WaitForServers,
        Lifecycle::Running | Lifecycle::Exit => ShutdownState::Now,
    }
}

/// Handles what the new process says during the hand-over: answers, cancel requests.
fn answer(shared: &Arc<Shared>, h: &mut Handing, message: Message) -> Result<(), String> {
    match message {
        Message::Adopted { seq } => h.answered(seq, None),
        Message::NotAdopted { seq, reason } => h.answered(seq, Some(reason)),
        Message::Cancel(key) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                crate::server::cancel::forward_request(&shared.clients, (key.pid, key.secret)).await;
            });
        }
        Message::Refused { reason } => return Err(format!("the new process gave up: {reason}")),
        other => return Err(format!("unexpected {other:?}")),
    }
    Ok(())
}

/// LISTENing clients' notifications forwarded in this hand-over, for the closing log line.
#[derive(Default)]
struct Forwarding {
    messages: u64,
    seen: u64,
    missed: u64,
}

impl Forwarding {
    /// The frame for a LISTENing client's forwarded notifications (or their end), counted.
    fn frame(&mut self, marker: String, what: crate::upgrade::Forwarded) -> Message {
        use crate::upgrade::Forwarded;
        match what {
            Forwarded::Messages(list) => {
                self.messages += list.len() as u64;
                Message::Notifications {
                    marker,
                    messages: list.into_iter().map(|b| b.to_vec()).collect(),
                }
            }
            Forwarded::MarkerSeen => {
                self.seen += 1;
                Message::MarkerSeen { marker }
            }
            Forwarded::MarkerMissed(reason) => {
                self.missed += 1;
                tracing::warn!(
                    "upgrade: a LISTENing client's notifications stopped before its marker: {reason}"
                );
                Message::MarkerMissed { marker, reason }
            }
        }
    }
}

/// Sends a frame within [`STEP_LIMIT`]: the new process reads all the time (its answers go
/// through a writer task of their own), so a send that takes longer means it hangs.
async fn send(writer: &Writer, message: &Message, fds: &[std::os::fd::RawFd]) -> Result<(), String> {
    match tokio::time::timeout(STEP_LIMIT, writer.send(message, fds)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the new process stopped reading".to_string()),
    }
}

/// The next message of the opening steps, within [`STEP_LIMIT`].
async fn step(reader: &mut Reader) -> std::io::Result<Message> {
    match tokio::time::timeout(STEP_LIMIT, reader.recv()).await {
        Ok(r) => r.map(|(m, _)| m),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the new process did not answer in time",
        )),
    }
}

/// Asks every client not asked yet to hand itself over once idle (clients that logged in
/// since the last round included). Each is asked once: one that stays (TLS) is not woken again.
fn ask_new_clients(shared: &Arc<Shared>, asked: &mut HashSet<u64>) {
    shared.for_each_client(|c| {
        if asked.insert(c.id) {
            c.kill_with(Kill::HandOver);
        }
    });
}

/// upgrade_timeout passed: the clients still here (in a transaction, or on TLS) are told why
/// and disconnected.
fn tell_the_rest(shared: &Arc<Shared>, timeout: Duration) {
    let reason = format!(
        "sluice is being upgraded: the connection was still busy (in a transaction, or on TLS) when upgrade_timeout ({}) ended; reconnect",
        crate::config::format_duration(timeout)
    );
    let mut n = 0;
    shared.for_each_client(|c| {
        n += 1;
        c.kill(&reason);
    });
    tracing::warn!(
        clients = n,
        "upgrade: upgrade_timeout passed; disconnecting the clients still here"
    );
}
