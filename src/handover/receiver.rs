//! The new process's side of an upgrade: speak the format, take the listeners and start
//! serving on them, adopt each client and idle server the old process sends, forward cancel
//! requests both ways, and at the end tell systemd it is the main process now.

use super::TEST_HOOK_PREFIX;
use crate::listener::{Inherited, RunningPooler};
use crate::shared::{Shared, ShutdownMode};
use crate::upgrade::channel::{self, Reader, Writer};
use crate::upgrade::format::{Message, OLDEST_VERSION, SERVERS_SINCE, ShutdownState, VERSION};
use crate::upgrade::{Forwarded, Outgoing};
use crate::{Config, Error};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// The test hook's exit after K clients ([`ExitPoint::AfterClients`]).
const TEST_EXIT: &str = "test hook: exit after K clients";

/// After how many clients or servers the test hook ends the new process.
#[derive(PartialEq, Eq)]
enum Limit {
    None,
    Clients(u64),
    Servers(u64),
}

/// How long the old process has to answer each opening step.
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// Where a test makes the new process die (docs/upgrades.md, "Testing"):
/// `SLUICE_UPGRADE_TEST_EXIT=listeners` (on receiving the listeners), `accepting` (right
/// after saying it accepts), `clients:K` (on receiving client K+1), `servers:K` (on
/// receiving server K+1).
enum ExitPoint {
    Listeners,
    Accepting,
    AfterClients(u64),
    AfterServers(u64),
}

fn exit_point() -> Option<ExitPoint> {
    let v = std::env::var(format!("{TEST_HOOK_PREFIX}EXIT")).ok()?;
    match v.as_str() {
        "listeners" => Some(ExitPoint::Listeners),
        "accepting" => Some(ExitPoint::Accepting),
        other => match other.split_once(':')? {
            ("clients", k) => k.parse().ok().map(ExitPoint::AfterClients),
            ("servers", k) => k.parse().ok().map(ExitPoint::AfterServers),
            _ => None,
        },
    }
}

/// The new process of an upgrade: when the old process started this one (`fd` is the channel,
/// from [`super::CHANNEL_FD_VAR`]), takes its listeners and starts serving on them; clients follow in
/// the background. An Err leaves the old process serving (it sees the channel close).
pub async fn take_over(config: Config, fd: i32) -> Result<RunningPooler, Error> {
    let fail = |what: String| Error::Bind {
        what: "upgrade channel".to_string(),
        source: std::io::Error::other(what),
    };
    // SAFETY: the old process passed this descriptor for us alone (CHANNEL_FD_VAR).
    let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    // SAFETY: fcntl on our descriptor: it must not leak into a later upgrade's process.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // A test hook claims another format version, to see the old process refuse it.
    let claimed: Option<u32> = std::env::var(format!("{TEST_HOOK_PREFIX}VERSION"))
        .ok()
        .and_then(|v| v.parse().ok());
    let (mut reader, mut writer) =
        channel::open(socket, VERSION, OLDEST_VERSION..=VERSION).map_err(|e| fail(e.to_string()))?;
    let io = |e: std::io::Error| fail(e.to_string());
    // The old process speaks first; this one answers in its version (N+1 takes over from N).
    let version = match step(&mut reader).await {
        Ok((Message::Hello { pid }, _)) => {
            let version = reader.last_version();
            reader.accept_only(version);
            writer.set_version(claimed.unwrap_or(version));
            writer
                .send(
                    &Message::Hello {
                        pid: std::process::id(),
                    },
                    &[],
                )
                .await
                .map_err(io)?;
            tracing::info!(old = pid, version, "upgrade: taking over from the old process");
            version
        }
        Ok((Message::Refused { reason }, _)) => {
            return Err(fail(format!("the old process refused: {reason}")));
        }
        Ok((other, _)) => return Err(fail(format!("unexpected {other:?}"))),
        Err(e) => return Err(fail(writer.refuse(e.to_string()).await)),
    };
    let (tcp, unix, metrics, fds) = match step(&mut reader).await.map_err(io)? {
        (Message::Listeners { tcp, unix, metrics }, fds) => (tcp, unix, metrics, fds),
        (Message::Refused { reason }, _) => return Err(fail(format!("the old process refused: {reason}"))),
        (other, _) => return Err(fail(format!("unexpected {other:?}"))),
    };
    let exit = exit_point();
    if matches!(exit, Some(ExitPoint::Listeners)) {
        std::process::exit(3);
    }
    let inherited = inherited(tcp, unix, metrics, fds).map_err(io)?;
    let pooler = crate::listener::start_with(config, Some(inherited)).await?;
    writer.send(&Message::Accepting, &[]).await.map_err(io)?;
    if matches!(exit, Some(ExitPoint::Accepting)) {
        std::process::exit(3);
    }
    // Not upgraded again before the old process has handed everything over.
    super::sender::RUNNING.store(true, std::sync::atomic::Ordering::Release);
    let limit = match exit {
        Some(ExitPoint::AfterClients(k)) => Limit::Clients(k),
        Some(ExitPoint::AfterServers(k)) => Limit::Servers(k),
        _ => Limit::None,
    };
    if version < SERVERS_SINCE {
        tracing::info!(
            version,
            "upgrade: the old process speaks an older format; its servers stay there"
        );
    }
    tokio::spawn(receive(
        pooler.shared().clone(),
        reader,
        writer,
        limit,
        pooler.pidfile.clone(),
    ));
    Ok(pooler)
}

/// The next message of the opening steps, within [`STEP_LIMIT`].
async fn step(reader: &mut Reader) -> std::io::Result<(Message, Vec<OwnedFd>)> {
    match tokio::time::timeout(STEP_LIMIT, reader.recv()).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the old process did not answer in time",
        )),
    }
}

/// Most TCP listeners one hand-over carries (one per `listen_addr` address).
const MAX_TCP_LISTENERS: usize = 64;

/// The listeners from their descriptors, in the order [`Message::Listeners`] gives: `tcp_count`
/// TCP listeners, then the unix one, then the metrics one.
fn inherited(
    tcp_count: usize,
    unix: Option<(std::path::PathBuf, (u64, u64))>,
    metrics: bool,
    fds: Vec<OwnedFd>,
) -> std::io::Result<Inherited> {
    if !(1..=MAX_TCP_LISTENERS).contains(&tcp_count) {
        return Err(std::io::Error::other(format!(
            "{tcp_count} TCP listeners announced; expected 1 to {MAX_TCP_LISTENERS}"
        )));
    }
    let mut fds = fds.into_iter();
    let missing = || std::io::Error::other("a listener did not arrive");
    let mut tcp = Vec::with_capacity(tcp_count);
    for _ in 0..tcp_count {
        let l = std::net::TcpListener::from(fds.next().ok_or_else(missing)?);
        l.set_nonblocking(true)?;
        tcp.push(l);
    }
    let unix = match unix {
        Some((path, id)) => {
            let l = std::os::unix::net::UnixListener::from(fds.next().ok_or_else(missing)?);
            Some((l, path, id))
        }
        None => None,
    };
    let metrics = match metrics {
        true => {
            let l = std::net::TcpListener::from(fds.next().ok_or_else(missing)?);
            l.set_nonblocking(true)?;
            Some(l)
        }
        false => None,
    };
    Ok(Inherited { tcp, unix, metrics })
}

/// Adopts clients until the old process says Done (then tells systemd and says Bye), and
/// passes cancel requests for keys not known here to the old process meanwhile. Answers go
/// through a writer task, so this loop never waits to write: the old process may be blocked
/// writing to us, and reads our answers only between its writes.
async fn receive(
    shared: Arc<Shared>,
    mut reader: Reader,
    writer: Writer,
    exit_after: Limit,
    pidfile: Arc<std::sync::OnceLock<crate::service::pidfile::PidFile>>,
) {
    // Unbounded, but holding at most one answer per client the old process sent (bounded by
    // its clients) and the cancel requests of the hand-over's few seconds.
    let (answers, mut queue) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let writing = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if let Err(e) = writer.send(&m, &[]).await {
                return Err(e.to_string());
            }
        }
        Ok(())
    });
    let mut outbox = shared.handover.open();
    let mut adopted = 0u64;
    let mut servers = 0u64;
    let ended = loop {
        tokio::select! {
            got = reader.recv() => match got {
                Ok((Message::Server { seq, state }, fds)) => {
                    if exit_after == Limit::Servers(servers) {
                        break TEST_EXIT.to_string();
                    }
                    let answer = match fds.into_iter().next() {
                        Some(fd) => super::servers::adopt(&shared, &state, fd),
                        None => Err("its socket did not arrive".to_string()),
                    };
                    let reply = match answer {
                        Ok(()) => {
                            servers += 1;
                            Message::Adopted { seq }
                        }
                        Err(reason) => {
                            tracing::info!(pool = %format!("{}/{}", state.database, state.user), "upgrade: a server handed over was closed: {reason}");
                            Message::NotAdopted { seq, reason }
                        }
                    };
                    if answers.send(reply).is_err() {
                        break "cannot answer the old process".to_string();
                    }
                }
                Ok((Message::Client { seq, state }, fds)) => {
                    if exit_after == Limit::Clients(adopted) {
                        break TEST_EXIT.to_string();
                    }
                    let answer = match fds.into_iter().next() {
                        Some(fd) => crate::session::handover::adopt(&shared, *state, fd),
                        None => Err("its socket did not arrive".to_string()),
                    };
                    let reply = match answer {
                        Ok(()) => {
                            adopted += 1;
                            Message::Adopted { seq }
                        }
                        Err(reason) => Message::NotAdopted { seq, reason },
                    };
                    if answers.send(reply).is_err() {
                        break "cannot answer the old process".to_string();
                    }
                }
                Ok((Message::Cancel(key), _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        crate::server::cancel::forward_request(&shared.clients, (key.pid, key.secret)).await;
                    });
                }
                Ok((Message::Shutdown { mode }, _)) => {
                    tracing::info!(?mode, "upgrade: the old process is stopping; so does this one");
                    shared.shutdown(match mode {
                        ShutdownState::WaitForClients => Some(ShutdownMode::WaitForClients),
                        ShutdownState::WaitForServers => Some(ShutdownMode::WaitForServers),
                        ShutdownState::Now => None,
                    });
                }
                Ok((Message::Notifications { marker, messages }, _)) => {
                    let list = messages.into_iter().map(bytes::Bytes::from).collect();
                    shared.joins.pass(&marker, Forwarded::Messages(list));
                }
                Ok((Message::MarkerSeen { marker }, _)) => shared.joins.pass(&marker, Forwarded::MarkerSeen),
                Ok((Message::MarkerMissed { marker, reason }, _)) => {
                    shared.joins.pass(&marker, Forwarded::MarkerMissed(reason));
                }
                Ok((Message::Done, _)) => {
                    shared.handover.close();
                    shared.joins.close();
                    if let Some(path) = shared.config.load().pooler.pidfile.clone() {
                        match crate::service::pidfile::PidFile::take_over(&path) {
                            Ok(f) => {
                                let _ = pidfile.set(f);
                            }
                            Err(e) => tracing::error!("{e}"),
                        }
                    }
                    crate::service::notify::main_pid_ready(&crate::service::status_line(&shared));
                    let _ = answers.send(Message::Bye);
                    drop(answers);
                    let _ = tokio::time::timeout(STEP_LIMIT, writing).await;
                    tracing::info!(adopted, servers, "upgrade: done; this process is the pooler now");
                    super::sender::RUNNING.store(false, std::sync::atomic::Ordering::Release);
                    return;
                }
                Ok((other, _)) => break format!("unexpected {other:?}"),
                Err(e) => break e.to_string(),
            },
            parcel = outbox.recv() => match parcel {
                Some(Outgoing::Cancel(key)) => {
                    if answers.send(Message::Cancel(key)).is_err() {
                        break "cannot write to the old process".to_string();
                    }
                }
                Some(Outgoing::Client { reply, .. }) => {
                    let _ = reply.send(Err("this is the new process".to_string()));
                }
                Some(Outgoing::Forward { .. }) => {}
                None => break "the outbox closed".to_string(),
            },
        }
    };
    if ended == TEST_EXIT {
        // The answers given so far reach the old process first: exactly K clients were adopted.
        drop(answers);
        let _ = tokio::time::timeout(STEP_LIMIT, writing).await;
        std::process::exit(3);
    }
    writing.abort();
    shared.handover.close();
    shared.joins.close();
    super::sender::RUNNING.store(false, std::sync::atomic::Ordering::Release);
    tracing::warn!(
        adopted,
        "upgrade: the channel to the old process ended early ({ended}); serving on"
    );
}
