//! Relaying between a client and the server it holds: both directions at once with bounded
//! buffers, server responses forwarded as bytes in batches. Only the messages sluice must
//! understand are looked at: the client's Parse/Bind/Describe/Close (prepared statements, see
//! `prepared`), and the server's ReadyForQuery, ErrorResponse, ParameterStatus, CommandComplete
//! and the completions that answer extended-protocol messages (see `responses`).

use super::client::ClientIo;
use super::link::{ClientBatch, Expiry, Link, Timeouts};
use super::params::ClientParams;
use super::statements::{BindOutcome, Books, ClientStatements, ErrorNote, Outcome, Translator, Verdict};
use super::text_scan::Words;
use crate::clients::ClientInfo;
use crate::pool::PoolStats;
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{FrameError, ScanItem, TxStatus, Want};
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Stop reading a peer once this much is waiting to be written to the other side.
pub(super) const OUT_CAP: usize = 64 * 1024;
/// Bytes requested per socket read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Most requests (Query or Sync) in flight before sluice stops reading the client.
const MAX_PENDING: usize = 4096;
/// Most replies of any kind owed before sluice stops reading the client.
const MAX_DUE: usize = 65_536;
/// How much of a Bind is looked at to find its statement name (the parameters pass as they are).
const BIND_HEAD: usize = 1024;
/// Simple queries up to this size are read whole when statements are tracked (to see a
/// `DEALLOCATE name`); longer ones pass in pieces.
const SMALL_QUERY: usize = 512;

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
    /// A LISTEN or UNLISTEN for the session to answer (transaction mode; nothing in flight).
    Listen(super::listen::ListenRequest),
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
    ServerFatal(crate::protocol::PgError),
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
    pub(super) listen_request: Option<super::listen::ListenRequest>,
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
    let killed = ctx.info.killed(true);
    tokio::pin!(killed);
    // The checkout's clock reading when this first turn runs in the same poll (else None).
    let mut fresh = link.take_fresh();
    loop {
        let pumped = pump_client(client, link, server, ctx)?;
        if let Some(request) = ctx.listen_request.take() {
            return Ok(RelayEnd::Listen(request));
        }
        link.note_request_start(server, ctx.info, fresh.take());
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
        let starved = pumped == ClientPump::Starved;
        let read_client = (client.inbuf.len() < OUT_CAP || starved) && room_for_more(link);
        let read_server = client.outbuf.len() < OUT_CAP;
        let deadline = link.next_deadline(server.tx_status, &ctx.timeouts);
        // Notifications go out between the server's messages, as PostgreSQL sends them.
        let deliver = ctx.listen.is_some() && link.server_scan.at_boundary() && client.outbuf.len() < OUT_CAP;
        let (mut client_reader, mut client_writer) = client.socket.split();
        // In a fixed order (`biased`: no random draw per turn, and the branches that are ready
        // most often are polled first). Nothing starves: the kill and the deadline come first
        // and end the relay (or, for query_timeout's cancel, fire once); each write only drains
        // a buffer bounded by OUT_CAP and its branch is off once that is empty; notifications
        // stop at OUT_CAP of unsent output too (and a full queue ends the client), so they come
        // before the server's input, which stops at OUT_CAP as well; the server's input comes
        // before the client's because the client's is bounded by what the server has yet to
        // answer (`room_for_more`). Each such stop is drained by a branch ahead of it.
        tokio::select! {
            biased;
            reason = &mut killed => return Ok(RelayEnd::Killed(reason)),
            _ = sleep_until(deadline.map(|d| d.0)), if deadline.is_some() => {
                let Some((_, expiry)) = deadline else { continue };
                if expiry == Expiry::Query && link.cancel_request() {
                    tracing::info!(backend_pid = server.backend_pid, "query_timeout: cancelling the query");
                    crate::server::cancel::cancel_running_query(server);
                    continue;
                }
                return Ok(RelayEnd::TimedOut(expiry));
            }
            r = server.writer.write(&link.to_server), if !link.to_server.is_empty() => {
                let n = r.map_err(RelayError::Server)?;
                link.to_server.advance(n);
                release_if_empty(&mut link.to_server);
            }
            r = client_writer.write(&client.outbuf), if !client.outbuf.is_empty() => {
                let n = r.map_err(RelayError::Client)?;
                client.bytes_out += n as u64;
                client.outbuf.advance(n);
                release_if_empty(&mut client.outbuf);
            }
            Some(msg) = next_notification(ctx.listen), if deliver => {
                client.outbuf.extend_from_slice(&msg);
                if let Some(l) = ctx.listen.as_deref_mut() {
                    l.drain_into(&mut client.outbuf, OUT_CAP);
                }
            }
            r = read_some(&mut server.reader, &mut server.read_buf), if read_server => {
                if r.map_err(RelayError::Server)? == 0 {
                    return Err(RelayError::Server(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            r = client_reader.read_available(&mut client.inbuf, READ_CHUNK), if read_client => {
                let n = r.map_err(RelayError::Client)?;
                if n == 0 {
                    return Ok(RelayEnd::ClientGone);
                }
                client.bytes_in += n as u64;
            }
        }
    }
}

/// The client's next notification (never, when it listens on nothing).
async fn next_notification(listen: &mut Option<Box<super::listen::Listening>>) -> Option<bytes::Bytes> {
    std::future::poll_fn(|cx| match listen.as_deref_mut() {
        Some(l) => l.poll_next(cx),
        None => std::task::Poll::Pending,
    })
    .await
}

/// True while the server-bound buffer and the replies owed leave room for more client messages.
fn room_for_more(link: &Link) -> bool {
    link.to_server.len() < OUT_CAP
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

async fn read_some(reader: &mut crate::stream::ReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    reader.read_available(buf, READ_CHUNK).await
}

/// How a client message is read: whole when sluice must look at it, in pieces otherwise.
/// `executes_answered`: a portal is a DEALLOCATE sluice answers, so Executes are read whole.
/// A message PostgreSQL would not accept here is refused at its header: nothing of it, nor of
/// anything after it, reaches the server.
/// `whole_text`: statements that would pin the server are refused, so query texts come whole.
/// `listening`: sluice answers LISTEN/UNLISTEN, so query texts short enough to be one come whole.
fn client_want(
    tag: u8,
    total: usize,
    tracking: bool,
    executes_answered: bool,
    whole_text: bool,
    listening: bool,
) -> Result<Want, FrameError> {
    crate::protocol::check_client_message(tag, total)?;
    Ok(match tag {
        frontend::TERMINATE => Want::Whole,
        frontend::QUERY | frontend::PARSE if whole_text => Want::Whole,
        frontend::QUERY | frontend::PARSE if listening && total <= super::listen::LISTEN_TEXT_MAX => {
            Want::Whole
        }
        frontend::EXECUTE if executes_answered => Want::Whole,
        frontend::PARSE | frontend::DESCRIBE | frontend::CLOSE if tracking => Want::Whole,
        frontend::BIND if tracking => Want::Head(BIND_HEAD),
        frontend::QUERY if tracking && total <= SMALL_QUERY => Want::Whole,
        _ => Want::Pass,
    })
}

/// Where reading the client's buffered messages stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPump {
    /// Out of bytes, or of room for more.
    Stopped,
    /// For want of bytes of a message that must come whole: the client must be read even past
    /// the usual buffer limit.
    Starved,
    /// The client sent Terminate (which never reaches the server).
    Terminated,
}

/// Moves complete client messages (or pieces of large ones) to the server-bound buffer,
/// translating prepared-statement names on the way.
fn pump_client(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<ClientPump, RelayError> {
    let tracking = ctx.statement_capacity > 0;
    let whole_text = link.pins.refuses();
    let listening = ctx.emulates_listen;
    while room_for_more(link) {
        // Per message: a Bind just read may have made the next Execute sluice's to answer.
        let executes_answered = ctx
            .statements
            .as_ref()
            .is_some_and(|s| s.deallocating.has_portal());
        let item = client
            .scan
            .next_with(&client.inbuf, |tag, total| {
                client_want(tag, total, tracking, executes_answered, whole_text, listening)
            })
            .map_err(RelayError::ClientProtocol)?;
        match item {
            ScanItem::NeedMore => return Ok(ClientPump::Starved),
            ScanItem::Pass { len, tag } => {
                let piece = client.inbuf.split_to(len);
                let words = match tag {
                    Some(t) => link.text.begin(t, &piece),
                    None => link.text.more(&piece),
                };
                watch_identity(server, words);
                match tag {
                    Some(t) if link.client_batch == ClientBatch::SkippingToSync && t != frontend::SYNC => {
                        continue;
                    }
                    Some(t) => {
                        link.client_batch = ClientBatch::Forwarding;
                        link.on_client_message(t);
                        if t == frontend::QUERY || t == frontend::PARSE {
                            on_client_text(link, ctx.params, t, words);
                            remember_query(ctx.info, t, &piece);
                        }
                    }
                    None if link.client_batch != ClientBatch::Forwarding => continue,
                    None => {
                        if let Some(t @ (frontend::QUERY | frontend::PARSE)) = link.text.tag() {
                            on_client_text(link, ctx.params, t, words);
                        }
                    }
                }
                link.to_server.unsplit(piece);
            }
            ScanItem::Whole {
                tag: frontend::TERMINATE,
                len,
            } => {
                client.inbuf.advance(len);
                return Ok(ClientPump::Terminated);
            }
            ScanItem::Whole { tag, len } => {
                let words = link.text.begin(tag, &client.inbuf[..len]);
                watch_identity(server, words);
                if link.client_batch == ClientBatch::SkippingToSync {
                    client.inbuf.advance(len);
                    continue;
                }
                link.client_batch = ClientBatch::Forwarding;
                if whole_text && super::pin_refusal::refuse(tag, &client.inbuf[..len], link) {
                    client.inbuf.advance(len);
                    continue;
                }
                let sql = tag == frontend::QUERY || tag == frontend::PARSE;
                if listening && (sql || tag == frontend::BIND) {
                    use super::listen::Intercept;
                    let statements = tracking.then_some(&mut *ctx.statements);
                    let quiet = if link.quiet(client) {
                        super::listen::Quiet::Synced
                    } else if link.answered(client) {
                        super::listen::Quiet::OpenBatch
                    } else {
                        super::listen::Quiet::Busy
                    };
                    let mentions_listen = words.has(Words::LISTEN);
                    match super::listen::intercept(tag, client, len, quiet, statements, mentions_listen) {
                        Intercept::Pass => {}
                        Intercept::Wait => break,
                        Intercept::Starved => return Ok(ClientPump::Starved),
                        Intercept::Rewritten => continue,
                        Intercept::Refused(e) => {
                            client.inbuf.advance(len);
                            link.responses.push_error(&e);
                            link.input.unsynced();
                            link.client_batch = ClientBatch::SkippingToSync;
                            continue;
                        }
                        Intercept::Answer(request) => {
                            ctx.listen_request = Some(request);
                            return Ok(ClientPump::Stopped);
                        }
                        Intercept::PassUnlistening { commands, blocks } => {
                            if let Some(l) = ctx.listen.as_deref_mut() {
                                l.unlisten_among(&commands, blocks || server.tx_status != TxStatus::Idle);
                            }
                        }
                    }
                }
                let outcome = if tracking || !sql {
                    translate(tag, &client.inbuf[..len], link, server, ctx)
                } else {
                    Outcome::Forward
                };
                if outcome == Outcome::Wait {
                    break; // read again once the shape check is answered
                }
                let msg = client.inbuf.split_to(len);
                if sql {
                    remember_query(ctx.info, tag, &msg);
                    on_client_text(link, ctx.params, tag, words);
                }
                match outcome {
                    Outcome::Forward => {
                        link.on_client_message(tag);
                        link.to_server.unsplit(msg);
                    }
                    Outcome::Done | Outcome::Wait => {}
                    Outcome::Refused => link.client_batch = ClientBatch::SkippingToSync,
                }
            }
            ScanItem::Head { tag, len, head } => {
                let words = link.text.begin(tag, &client.inbuf[..head]);
                watch_identity(server, words);
                if link.client_batch == ClientBatch::SkippingToSync {
                    client.inbuf.advance(head);
                    client.scan.pass_rest(len - head);
                    continue;
                }
                link.client_batch = ClientBatch::Forwarding;
                let outcome = if tag == frontend::BIND {
                    bind(&client.inbuf[..head], len, link, server, ctx)
                } else {
                    BindOutcome::Forward
                };
                match outcome {
                    BindOutcome::Rewritten(k) => {
                        client.inbuf.advance(k);
                        client.scan.pass_rest(len - k);
                    }
                    BindOutcome::Forward => {
                        let piece = client.inbuf.split_to(head);
                        client.scan.pass_rest(len - head);
                        link.on_client_message(tag);
                        link.to_server.unsplit(piece);
                    }
                    BindOutcome::Refused => {
                        client.inbuf.advance(head);
                        client.scan.pass_rest(len - head);
                        link.client_batch = ClientBatch::SkippingToSync;
                    }
                    BindOutcome::Wait => break,
                    BindOutcome::Answered => {
                        client.inbuf.advance(head);
                        client.scan.pass_rest(len - head);
                        link.client_batch = ClientBatch::DroppingMessage;
                    }
                }
            }
        }
    }
    Ok(ClientPump::Stopped)
}

/// A client message that may change who the session is (`SET ROLE`, `SET SESSION
/// AUTHORIZATION`, `set_config('role', ...)`, a FunctionCall: [`Words::IDENTITY`]) marks its
/// server: the release path resets its role and session authorization (or closes it) before any
/// other client gets it. A false alarm costs one reset off the client's path.
fn watch_identity(server: &mut ServerConn, words: Words) {
    if words.has(Words::IDENTITY) {
        server.identity = crate::server::Identity::MaybeChanged;
    }
}

/// The words of a forwarded Query's or Parse's text (`tag`), for the watches of settings and
/// pins.
fn on_client_text(link: &mut Link, params: &mut ClientParams, tag: u8, words: Words) {
    if words != Words::NONE {
        link.resets.on_client_text(tag, words, params);
        link.pins.on_client_text(tag, words, params);
    }
}

fn translator<'a>(
    link: &'a mut Link,
    server: &'a mut ServerConn,
    ctx: &'a mut RelayContext<'_>,
) -> Translator<'a> {
    Translator {
        client: ctx.statements.get_or_insert_with(Default::default),
        server: &mut server.statements,
        capacity: ctx.statement_capacity,
        limit: ctx.prepared_limit,
        responses: &mut link.responses,
        out: &mut link.to_server,
        stats: ctx.stats,
        plans: ctx.plans,
    }
}

/// Translates a whole Parse, Describe, Close or short Query when statements are tracked.
fn translate(
    tag: u8,
    msg: &[u8],
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Outcome {
    if link.responses.server_skipping() {
        return Outcome::Forward; // the server discards it anyway
    }
    let tx_status = server.tx_status;
    let quiet = link.responses.is_empty();
    let outcome = match tag {
        frontend::PARSE => translator(link, server, ctx).parse(msg, quiet && tx_status == TxStatus::Failed),
        frontend::EXECUTE => translator(link, server, ctx).execute_deallocate(msg),
        frontend::DESCRIBE => translator(link, server, ctx).describe(msg),
        frontend::CLOSE => translator(link, server, ctx).close(msg),
        // Only with nothing in flight is the status sluice would report certain.
        frontend::QUERY if quiet => translator(link, server, ctx).query_deallocate(msg, tx_status),
        frontend::BIND => match bind(msg, msg.len(), link, server, ctx) {
            BindOutcome::Rewritten(k) => {
                link.to_server.extend_from_slice(&msg[k..]);
                Outcome::Done
            }
            BindOutcome::Forward => Outcome::Forward,
            BindOutcome::Refused => Outcome::Refused,
            BindOutcome::Wait => Outcome::Wait,
            BindOutcome::Answered => Outcome::Done,
        },
        _ => Outcome::Forward,
    };
    if outcome != Outcome::Forward && tag != frontend::QUERY {
        link.input.unsynced();
    }
    outcome
}

/// Translates the head of a Bind.
fn bind(
    head: &[u8],
    total: usize,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> BindOutcome {
    if link.responses.server_skipping() {
        return BindOutcome::Forward; // the server discards it anyway
    }
    let outcome = translator(link, server, ctx).bind(head, total);
    if outcome != BindOutcome::Forward {
        link.input.unsynced();
    }
    outcome
}

/// Moves server messages to the client-bound buffer (and sluice's own replies into their
/// places). Returns true when it stopped at a ReadyForQuery that leaves nothing due.
fn pump_server(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<bool, RelayError> {
    loop {
        if link.server_scan.at_boundary() {
            while let Some((bytes, ready)) = link.responses.pop_reply() {
                client.outbuf.extend_from_slice(&bytes);
                if ready {
                    link.on_ready_for_query(server, ctx.stats, ctx.info, client, ctx.release_when_idle);
                    if link.pending_requests() == 0 && server.tx_status == TxStatus::Idle {
                        return Ok(true);
                    }
                }
            }
        }
        if client.outbuf.len() >= OUT_CAP {
            return Ok(false);
        }
        let item = link
            .server_scan
            .next(&server.read_buf, backend::read_whole_by_relay)
            .map_err(|e| RelayError::ServerProtocol(e.to_string()))?;
        let (tag, len, whole) = match item {
            ScanItem::NeedMore => return Ok(false),
            ScanItem::Pass { len, tag: None } => {
                client.outbuf.unsplit(server.read_buf.split_to(len));
                continue;
            }
            ScanItem::Pass { len, tag: Some(t) } => (t, len, false),
            ScanItem::Whole { tag, len } => (tag, len, true),
            ScanItem::Head { .. } => {
                return Err(RelayError::ServerProtocol("unexpected partial message".into()));
            }
        };
        let msg = server.read_buf.split_to(len);
        let mut note = None;
        if whole {
            match tag {
                backend::READY_FOR_QUERY => {
                    if len != 6 {
                        return Err(RelayError::ServerProtocol("malformed ReadyForQuery".into()));
                    }
                    server.tx_status =
                        TxStatus::try_from(msg[5]).map_err(|e| RelayError::ServerProtocol(e.to_string()))?;
                    if let Some(l) = ctx.listen.as_deref_mut() {
                        l.on_ready(server.tx_status);
                    }
                }
                backend::ERROR_RESPONSE => {
                    let error = crate::protocol::PgError::from_fields(&msg[5..]);
                    if error.severity == crate::protocol::Severity::Fatal {
                        return Err(RelayError::ServerFatal(error));
                    }
                    if error.sqlstate == crate::protocol::sqlstate::READ_ONLY_SQL_TRANSACTION {
                        server.info.note_read_only_refusal();
                    }
                    note = Some(ErrorNote::of(&error));
                }
                backend::COMMAND_COMPLETE => {
                    command_complete(&msg[5..], server, ctx, link);
                    if let Some(l) = ctx.listen.as_deref_mut() {
                        l.on_command_complete(&msg[5..]);
                    }
                }
                backend::ROW_DESCRIPTION | backend::NO_DATA => row_description(&msg, link, server, ctx),
                backend::PARAMETER_STATUS => {
                    if let Some((name, value)) = parameter_status(&msg[5..]) {
                        if super::params::is_identity(name) {
                            // Reported only when it changed: who the session is changed.
                            server.identity = crate::server::Identity::MaybeChanged;
                        }
                        ctx.params.observe_server_report(name, value);
                        if name == "application_name" {
                            ctx.info.set_application_name(value);
                        }
                        server.params.insert(name.to_string(), value.to_string());
                    }
                }
                _ => {}
            }
        } else {
            link.on_server_message(tag);
        }
        let mut books = Books {
            client: ctx.statements.as_deref_mut(),
            server: &mut server.statements,
            plans: ctx.plans,
        };
        match link.responses.on_server_message(tag, note, &mut books) {
            Verdict::Hide => continue,
            Verdict::Replace(reply) => {
                client.outbuf.extend_from_slice(&reply);
                continue;
            }
            Verdict::Forward => {}
        }
        client.outbuf.unsplit(msg);
        if tag == backend::READY_FOR_QUERY {
            link.on_ready_for_query(server, ctx.stats, ctx.info, client, ctx.release_when_idle);
            if link.pending_requests() == 0 && server.tx_status == TxStatus::Idle {
                return Ok(true);
            }
        }
    }
}

/// A RowDescription or NoData answering a Describe of a tracked statement: remembers which rows
/// the client was told about, and which rows the server's copy gives; a shape check that finds
/// them different marks the client's statement as changed (PostgreSQL would refuse it).
fn row_description(msg: &[u8], link: &Link, server: &mut ServerConn, ctx: &mut RelayContext<'_>) {
    use super::statements::Undo;
    use std::hash::{Hash, Hasher};
    // Only a Describe of a tracked statement is remembered: a portal's (every extended
    // query's) is not hashed.
    let Some(undo @ (Undo::Uses { .. } | Undo::ShapeCheck { .. })) = link.responses.describing() else {
        return;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    msg.hash(&mut h);
    let shape = h.finish();
    match undo {
        Undo::Uses { hash, name } => {
            server.statements.set_shape(*hash, shape);
            if let Some(c) = ctx.statements.as_deref_mut() {
                c.set_shape(name, shape);
            }
        }
        Undo::ShapeCheck { hash, name } => {
            server.statements.set_shape(*hash, shape);
            if let Some(c) = ctx.statements.as_deref_mut()
                && c.shape(name) != Some(shape)
            {
                c.mark_changed(name);
            }
        }
        _ => {}
    }
}

/// A CommandComplete: DISCARD ALL / DEALLOCATE ALL dropped the server's statements (and the
/// client's, who asked for it).
fn command_complete(body: &[u8], server: &mut ServerConn, ctx: &mut RelayContext<'_>, link: &mut Link) {
    if super::statements::drops_all_statements(body) {
        server.statements.clear();
        if let Some(s) = ctx.statements.as_deref_mut() {
            s.clear();
        }
    }
    link.resets.on_command_complete(body);
    link.pins.on_command_complete(body);
    if ctx.emulates_listen && body == b"LISTEN\0" {
        // A LISTEN sluice did not see (in a statement too long to read): the release path
        // cleans the server (its UNLISTEN *) before anyone else gets it.
        tracing::warn!(
            client = ctx.info.id,
            "a LISTEN reached a pooled server; it is undone at release"
        );
        server.identity = crate::server::Identity::MaybeChanged;
    }
}

/// Keeps the start of a Query's SQL, or of a Parse's statement text, as the client's last query
/// (only the bytes already here; at most 200 characters are kept).
fn remember_query(info: &ClientInfo, tag: u8, message: &[u8]) {
    let body = message.get(5..).unwrap_or_default();
    let text = if tag == frontend::PARSE {
        // Statement name, then the query text.
        match memchr::memchr(0, body) {
            Some(i) => &body[i + 1..],
            None => return,
        }
    } else {
        body
    };
    // The record keeps the first LAST_QUERY_BYTES: when they are valid UTF-8 (nearly always),
    // they are all that needs reading, so the text's end is looked for among them only (a
    // vectorised search: this runs for every query).
    let head = &text[..text.len().min(LAST_QUERY_BYTES)];
    let head = &head[..memchr::memchr(0, head).unwrap_or(head.len())];
    match std::str::from_utf8(head) {
        Ok(head) => info.set_last_query(head),
        Err(_) => {
            let text = &text[..memchr::memchr(0, text).unwrap_or(text.len()).min(800)];
            info.set_last_query(&String::from_utf8_lossy(text))
        }
    }
}

/// Bytes of a query text the client's record keeps (`ClientInfo::set_last_query`).
const LAST_QUERY_BYTES: usize = 200;

fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The text kept before the search looked at the first LAST_QUERY_BYTES only: the whole
    /// text up to its NUL (at most 800 bytes), its head kept when valid UTF-8, else a lossy copy.
    fn kept_as_defined(tag: u8, body: &[u8]) -> Option<String> {
        let text = if tag == frontend::PARSE {
            &body[body.iter().position(|&b| b == 0)? + 1..]
        } else {
            body
        };
        let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len()).min(800)];
        let text = match std::str::from_utf8(&text[..text.len().min(LAST_QUERY_BYTES)]) {
            Ok(head) => head.to_string(),
            Err(_) => String::from_utf8_lossy(text).into_owned(),
        };
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Some(text[..end].to_string())
    }

    proptest! {
        #[test]
        fn the_remembered_query_is_the_text_as_defined(
            parse in any::<bool>(),
            terminated in any::<bool>(),
            mut body in proptest::collection::vec(prop_oneof![4 => 0x20u8..0x7f, 1 => Just(0u8), 1 => any::<u8>()], 0..1000),
        ) {
            if terminated {
                body.push(0); // as a real Query or Parse text is
            }
            let info = ClientInfo::new(crate::clients::PeerAddr::Unix, None, None, crate::clients::ClientNames::new("d", "u"), "");
            info.set_last_query("before");
            let tag = if parse { frontend::PARSE } else { frontend::QUERY };
            let mut message = vec![tag, 0, 0, 0, 0];
            message.extend_from_slice(&body);
            remember_query(&info, tag, &message);
            let expected = kept_as_defined(tag, &body).unwrap_or_else(|| "before".to_string());
            prop_assert_eq!(info.last_query(), expected);
        }
    }
}
