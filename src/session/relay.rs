//! Relaying between a client and the server it holds: both directions at once with bounded
//! buffers, server responses forwarded as bytes in batches. Only the messages sluice must
//! understand are looked at: the client's Parse/Bind/Describe/Close (prepared statements, see
//! `prepared`), and the server's ReadyForQuery, ErrorResponse, ParameterStatus, CommandComplete
//! and the completions that answer extended-protocol messages (see `responses`). This file is
//! the loop that waits on both sockets, the time limits and the kill; what it moves each way is
//! cut in `from_client` (client to server) and `from_server` (server to client).

mod from_client;
mod from_server;

use super::client::ClientIo;
use super::link::{Expiry, Link, Timeouts};
use super::params::ClientParams;
use super::statements::ClientStatements;
use crate::clients::ClientInfo;
use crate::pool::PoolStats;
use crate::protocol::FrameError;
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use from_client::{ClientPump, pump_client};
use from_server::pump_server;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Stop reading a peer once this much is waiting to be written to the other side.
pub(super) const OUT_CAP: usize = 64 * 1024;
/// Bytes requested per socket read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Most requests (Query or Sync) in flight before sluice stops reading the client.
const MAX_PENDING: usize = 4096;
/// Most replies of any kind owed before sluice stops reading the client.
const MAX_DUE: usize = 65_536;

/// How a relay stretch ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RelayEnd {
    /// The transaction ended (ReadyForQuery `I`, nothing due): the server may be released.
    TransactionDone,
    /// The client sent Terminate.
    Terminated,
    /// The client closed its socket.
    ClientGone,
    /// A time limit ran out.
    TimedOut(Expiry),
    /// The client was ended from outside (KILL_CLIENT, shutdown).
    Killed(crate::clients::Kill),
    /// A LISTEN or UNLISTEN for the session to answer (transaction mode; nothing in flight;
    /// boxed: the relay's result is carried by every transaction's future).
    Listen(Box<super::listen::ListenRequest>),
}

/// Why relaying stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub(super) enum RelayError {
    /// Reading or writing the client failed.
    #[error("client connection failed: {0}")]
    Client(std::io::Error),
    /// The client broke the framing.
    #[error("client protocol violation: {0}")]
    ClientProtocol(FrameError),
    /// Reading or writing the server failed, or it closed.
    #[error("server connection failed: {0}")]
    Server(std::io::Error),
    /// The server broke the framing.
    #[error("server protocol violation: {0}")]
    ServerProtocol(String),
    /// The server sent a FATAL error (it is about to close): not forwarded, so the session can
    /// decide what the client is told.
    #[error("server sent FATAL: {0}")]
    ServerFatal(Box<crate::protocol::PgError>),
}

/// What the relay needs besides the two connections: the client's settings, statements and
/// identity, the pool's counters, and the policy in force.
pub(super) struct RelayContext<'a> {
    /// The client's session settings (updated from ParameterStatus).
    pub(super) params: &'a mut ClientParams,
    /// The client's named prepared statements (created on first use).
    pub(super) statements: &'a mut Option<Box<ClientStatements>>,
    /// max_prepared_statements for this client: 0 when its statements pass through untouched.
    pub(super) statement_capacity: usize,
    /// What the client may keep prepared.
    pub(super) prepared_limit: crate::pool::ClientPreparedLimit,
    /// The pool's record of plans PostgreSQL refused after schema changes.
    pub(super) plans: &'a crate::server::statements::PlanInvalidations,
    /// The client's shared state.
    pub(super) info: &'a ClientInfo,
    /// The pool's counters.
    pub(super) stats: &'a PoolStats,
    /// Time limits.
    pub(super) timeouts: Timeouts,
    /// Transaction mode, and no pinned session state: stop at the end of each transaction.
    pub(super) release_when_idle: bool,
    /// Transaction mode (pinned or not): sluice answers LISTEN/UNLISTEN itself, and a LISTEN
    /// that reached the server anyway marks it for cleaning.
    pub(super) emulates_listen: bool,
    /// The client's LISTEN state (transaction mode), told of transaction ends and read for
    /// notifications to deliver between messages.
    pub(super) listen: &'a mut Option<Box<super::listen::Listening>>,
    /// A LISTEN request taken off the client's input, for the session to answer.
    pub(super) listen_request: Option<Box<super::listen::ListenRequest>>,
}

/// Relays until the transaction ends (when `release_when_idle`), the client leaves, or a side fails.
pub(super) async fn relay(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<RelayEnd, RelayError> {
    let end = relay_loop(client, link, server, ctx).await;
    server.info.set_prepared(server.statements.len());
    ctx.info
        .set_prepared(ctx.statements.as_ref().map_or(0, |s| s.len()));
    end
}

async fn relay_loop(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<RelayEnd, RelayError> {
    // Built once per relay, not per loop turn: each turn only polls it.
    let mut killed = ctx.info.killed_after_idle(true);
    // The relay's one timer, made on the first turn that has a deadline (boxed: most relays
    // have none, and the future of every transaction should not carry one) and moved only when
    // the deadline does.
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // The checkout's clock reading when this first turn runs in the same poll (else None).
    let mut fresh = link.take_fresh();
    loop {
        let pumped = pump_client(client, link, server, ctx)?;
        if let Some(request) = ctx.listen_request.take() {
            return Ok(RelayEnd::Listen(request));
        }
        link.note_request_start(server, ctx.info, fresh.take());
        // What was just buffered for the server goes now if its socket takes it (no turn of
        // the wait below for that write). When room for the client's buffered messages
        // was short and this made some, they are pumped first (the wait would not read
        // the client for them, nor wake for them).
        if !link.to_server.is_empty() {
            let blocked = !room_for_more(link);
            if send_now(link, server)? && blocked && room_for_more(link) && !client.inbuf.is_empty() {
                continue;
            }
        }
        let was_checking = link.responses.checking();
        if pump_server(client, link, server, ctx)?
            && (ctx.release_when_idle
                || link.resets.pending()
                || link.pins.pending()
                || ctx.params.reads_back_always())
            && link.quiet(client)
        {
            return Ok(RelayEnd::TransactionDone);
        }
        link.publish(server, ctx.info);
        if pumped == ClientPump::Terminated {
            return Ok(RelayEnd::Terminated);
        }
        if was_checking && !link.responses.checking() {
            continue; // a shape check was answered: the client's held messages go on now
        }
        // Likewise for the client: when its full buffer had stopped `pump_server` with the
        // server's bytes still here, they are pumped before the wait below polls the server.
        if !client.outbuf.is_empty() {
            let full = client.outbuf.len() >= OUT_CAP;
            if deliver_now(client)? && full && client.outbuf.len() < OUT_CAP && !server.read_buf.is_empty() {
                continue;
            }
        }
        let starved = pumped == ClientPump::Starved;
        let read_client = (client.inbuf.len() < OUT_CAP || starved) && room_for_more(link);
        let read_server = client.outbuf.len() < OUT_CAP;
        let deadline = link.next_deadline(server.tx_status, &ctx.timeouts);
        // Notifications go out between the server's messages, as PostgreSQL sends them.
        let deliver = ctx.listen.is_some() && link.server_scan.at_boundary() && client.outbuf.len() < OUT_CAP;
        if let Some((at, _)) = deadline {
            arm(&mut timer, tokio::time::Instant::from_std(at));
        }
        // One poll of what the relay waits on, in a fixed order (no random draw per turn, and
        // what is ready most often is polled first), each only when its condition holds, with
        // no future per branch. Nothing starves: the kill and the deadline come first and end
        // the relay (or, for query_timeout's cancel, fire once); each write only drains a buffer
        // bounded by OUT_CAP and is skipped once that is empty; notifications stop at OUT_CAP of
        // unsent output too (and a full queue ends the client), so they come before the
        // server's input, which stops at OUT_CAP as well; the server's input comes before the
        // client's because the client's is bounded by what the server has yet to answer
        // (`room_for_more`). Each such stop is drained by a branch ahead of it. The two writes
        // only finish what `send_now` and `deliver_now` above could not (TLS, a full socket). A
        // kill or a deadline that comes while such a write is tried is seen here, right after
        // it, as one that came just after a write in this wait would be.
        let woke = {
            let (mut client_reader, mut client_writer) = client.socket.split();
            let (inbuf, outbuf) = (&mut client.inbuf, &client.outbuf);
            let listen = &mut *ctx.listen;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(reason) = Pin::new(&mut killed).poll(cx) {
                    return Poll::Ready(Woke::Killed(reason));
                }
                if deadline.is_some()
                    && let Some(t) = timer.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Woke::Deadline);
                }
                if !link.to_server.is_empty()
                    && let Poll::Ready(r) = Pin::new(&mut server.writer).poll_write(cx, &link.to_server)
                {
                    return Poll::Ready(Woke::ServerWritten(r));
                }
                if !outbuf.is_empty()
                    && let Poll::Ready(r) = Pin::new(&mut client_writer).poll_write(cx, outbuf)
                {
                    return Poll::Ready(Woke::ClientWritten(r));
                }
                if deliver
                    && let Some(l) = listen.as_deref_mut()
                    && let Poll::Ready(Some(msg)) = l.poll_next(cx)
                {
                    return Poll::Ready(Woke::Notification(msg));
                }
                if read_server
                    && let Poll::Ready(r) =
                        server
                            .reader
                            .poll_read_available(cx, &mut server.read_buf, READ_CHUNK)
                {
                    return Poll::Ready(Woke::ServerRead(r));
                }
                if read_client
                    && let Poll::Ready(r) = client_reader.poll_read_available(cx, inbuf, READ_CHUNK)
                {
                    return Poll::Ready(Woke::ClientRead(r));
                }
                Poll::Pending
            })
            .await
        };
        match woke {
            Woke::Killed(reason) => return Ok(RelayEnd::Killed(reason)),
            Woke::Deadline => {
                let Some((_, expiry)) = deadline else { continue };
                if expiry == Expiry::Query && link.cancel_request() {
                    tracing::info!(
                        backend_pid = server.backend_pid,
                        "query_timeout: cancelling the query"
                    );
                    crate::server::cancel::cancel_running_query(server);
                    continue;
                }
                return Ok(RelayEnd::TimedOut(expiry));
            }
            Woke::ServerWritten(r) => {
                let n = r.map_err(RelayError::Server)?;
                link.to_server.advance(n);
                release_if_empty(&mut link.to_server);
            }
            Woke::ClientWritten(r) => {
                let n = r.map_err(RelayError::Client)?;
                client.bytes_out += n as u64;
                client.outbuf.advance(n);
                release_if_empty(&mut client.outbuf);
            }
            Woke::Notification(msg) => {
                client.outbuf.extend_from_slice(&msg);
                if let Some(l) = ctx.listen.as_deref_mut() {
                    l.drain_into(&mut client.outbuf, OUT_CAP);
                }
            }
            Woke::ServerRead(r) => {
                if r.map_err(RelayError::Server)? == 0 {
                    return Err(RelayError::Server(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Woke::ClientRead(r) => {
                let n = r.map_err(RelayError::Client)?;
                if n == 0 {
                    return Ok(RelayEnd::ClientGone);
                }
                client.bytes_in += n as u64;
            }
        }
    }
}

/// What ended a wait of the relay (see `relay_loop`).
enum Woke {
    /// The client was ended from outside.
    Killed(crate::clients::Kill),
    /// The earliest time limit came.
    Deadline,
    /// A write to the server (of `Link::to_server`).
    ServerWritten(std::io::Result<usize>),
    /// A write to the client (of its output).
    ClientWritten(std::io::Result<usize>),
    /// A notification for the client.
    Notification(bytes::Bytes),
    /// A read from the server into its read buffer.
    ServerRead(std::io::Result<usize>),
    /// A read from the client into its input.
    ClientRead(std::io::Result<usize>),
}

/// Sets the relay's timer to `at`: made the first time, then moved (re-registered) only when
/// `at` differs from the deadline it has.
fn arm(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, at: tokio::time::Instant) {
    match timer.as_mut() {
        Some(t) if t.deadline() == at => {}
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Writes what the server's socket takes now of the bytes buffered for it, without waiting
/// (TLS and a socket that takes nothing now are left to the wait). True when some went.
fn send_now(link: &mut Link, server: &ServerConn) -> Result<bool, RelayError> {
    match server.writer.try_write(&link.to_server) {
        Ok(n) => {
            link.to_server.advance(n);
            release_if_empty(&mut link.to_server);
            Ok(n > 0)
        }
        Err(e) if would_wait(&e) => Ok(false),
        Err(e) => Err(RelayError::Server(e)),
    }
}

/// Writes what the client's socket takes now of its buffered output, without waiting (as
/// [`send_now`]). True when some went.
fn deliver_now(client: &mut ClientIo) -> Result<bool, RelayError> {
    match client.socket.try_write(&client.outbuf) {
        Ok(n) => {
            client.bytes_out += n as u64;
            client.outbuf.advance(n);
            release_if_empty(&mut client.outbuf);
            Ok(n > 0)
        }
        Err(e) if would_wait(&e) => Ok(false),
        Err(e) => Err(RelayError::Client(e)),
    }
}

/// A non-blocking write that did nothing and may be tried again.
fn would_wait(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// True while the server-bound buffer and the replies owed leave room for more client messages.
fn room_for_more(link: &Link) -> bool {
    room_for(link, 0)
}

/// As [`room_for_more`], with `run` more bytes owed to the server than its buffer holds (the
/// client's messages a pump has judged to go on as they are, still in the client's input).
fn room_for(link: &Link, run: usize) -> bool {
    link.to_server.len() + run < OUT_CAP
        && link.pending_requests() < MAX_PENDING
        && link.responses.len() < MAX_DUE
        && !link.responses.checking()
}

/// Drops a fully written buffer. Its bytes were split off a read buffer; while this empty
/// handle lives, that read buffer cannot reclaim its space and each `reserve` allocates anew.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// Writes everything buffered for the client.
pub(super) async fn flush_client(client: &mut ClientIo) -> std::io::Result<()> {
    if !client.outbuf.is_empty() {
        client.socket.writer().write_all(&client.outbuf).await?;
        client.bytes_out += client.outbuf.len() as u64;
        client.outbuf = BytesMut::new();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;

    /// Polls once, with a waker that does nothing.
    fn ready(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(&mut cx).is_ready())
    }

    /// Where the timer lives (a new one made while the old is still there lives elsewhere).
    fn place(timer: &Option<Pin<Box<tokio::time::Sleep>>>) -> Option<*const tokio::time::Sleep> {
        timer.as_ref().map(|t| &**t as *const tokio::time::Sleep)
    }

    #[tokio::test]
    async fn the_relay_timer_is_made_once_and_moved_with_its_deadline() {
        let mut timer = None;
        let now = tokio::time::Instant::now();
        let (past, later, latest) = (
            now - Duration::from_secs(1),
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        );
        arm(&mut timer, past);
        let made = place(&timer);
        assert!(made.is_some());
        assert!(ready(&mut timer), "a deadline that has passed fires");
        // A later deadline (a query cancelled: it gets as long again) moves the fired timer.
        for (at, fires) in [(later, false), (later, false), (latest, false), (past, true)] {
            arm(&mut timer, at);
            assert_eq!(place(&timer), made, "one timer all along, not one per deadline");
            assert_eq!(timer.as_ref().map(|t| t.deadline()), Some(at));
            assert_eq!(ready(&mut timer), fires);
        }
    }
}
